"""Real image corpora rendered from open icon/emoji packages and scikit-image photos.

`mmdata corpus` builds them (see `mmdata/corpus/cli.py`); `mmdata/sample_corpus/` is the small
one bundled with the package (recipe in `mmdata/corpus/sample.py`).
"""
