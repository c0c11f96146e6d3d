"""One Beam PTransform per stage; composed only by pipelines/."""
