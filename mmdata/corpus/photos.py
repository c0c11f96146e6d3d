"""Real photos shipped inside scikit-image (``skimage.data``), with hand-written captions.

Only images whose files ship in the wheel (no download) and whose licence skimage documents as
public domain / CC0 / no known restrictions are listed. Licence notes are taken from the
docstrings of ``skimage.data.<name>`` (scikit-image 0.26).
"""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class Photo:
    name: str  # skimage.data function name, also the output file stem
    caption: str
    license: str  # SPDX id where one applies
    license_note: str
    url: str  # where skimage says the image comes from


PHOTOS: tuple[Photo, ...] = (
    Photo(
        "astronaut",
        "a smiling astronaut in an orange flight suit holding a helmet, with an American flag "
        "and a space shuttle model behind her",
        "public-domain",
        "NASA photo of Eileen Collins; no known copyright restrictions, public domain",
        "https://flic.kr/p/r9qvLn",
    ),
    Photo(
        "camera",
        "a black and white photo of a man in a dark coat looking through a camera on a tripod "
        "in a park",
        "CC0-1.0",
        "CC0 by the photographer (Lav Varshney)",
        "https://github.com/scikit-image/scikit-image/issues/3927",
    ),
    Photo(
        "chelsea",
        "a close-up photo of a tabby cat's face with green eyes",
        "CC0-1.0",
        "CC0 by the photographer (Stefan van der Walt)",
        "https://scikit-image.org/docs/stable/api/skimage.data.html",
    ),
    Photo(
        "coffee",
        "a cup of espresso on a red saucer with a spoon, on a wooden table",
        "CC0-1.0",
        "CC0 by the photographer (Rachel Michetti); courtesy of Pikolo Espresso Bar",
        "https://scikit-image.org/docs/stable/api/skimage.data.html",
    ),
    Photo(
        "rocket",
        "a rocket on its launch pad at dusk, lit by floodlights between tall towers",
        "public-domain",
        "SpaceX launch photo of DSCOVR on Falcon 9, released into the public domain",
        "https://www.flickr.com/photos/spacexphotos/16511594820/",
    ),
    Photo(
        "coins",
        "a black and white photo of rows of old coins on a dark background",
        "public-domain",
        "Brooklyn Museum collection; no known copyright restrictions",
        "https://www.brooklynmuseum.org/opencollection/archives/image/51611",
    ),
    Photo(
        "hubble_deep_field",
        "a deep space photo of many small distant galaxies on a black sky",
        "public-domain",
        "NASA Hubble image, may be freely used in the public domain",
        "http://hubblesite.org/newscenter/archive/releases/2012/37/image/a/",
    ),
    Photo(
        "retina",
        "a photo of the back of a human eye showing the orange retina and its blood vessels",
        "CC0-1.0",
        "Wikimedia Commons, CC0 1.0 Universal Public Domain Dedication",
        "https://commons.wikimedia.org/wiki/File:Fundus_photograph_of_normal_left_eye.jpg",
    ),
    Photo(
        "brick",
        "a black and white photo of a brick wall",
        "CC0-1.0",
        "CC0Textures (Bricks25), Creative Commons CC0",
        "https://cc0textures.com/view.php?tex=Bricks25",
    ),
    Photo(
        "grass",
        "a black and white close-up photo of grass",
        "CC0-1.0",
        "DeviantArt (linolafett, Grass-01), Creative Commons CC0",
        "https://www.deviantart.com/linolafett/art/Grass-01-434853879",
    ),
    Photo(
        "gravel",
        "a black and white close-up photo of gravel",
        "CC0-1.0",
        "CC0Textures (Gravel04), Creative Commons CC0",
        "https://cc0textures.com/view.php?tex=Gravel04",
    ),
    Photo(
        "clock",
        "a motion-blurred black and white photo of a round wall clock",
        "public-domain",
        "released into the public domain by the photographer (Stefan van der Walt)",
        "https://scikit-image.org/docs/stable/api/skimage.data.html",
    ),
    Photo(
        "text",
        "a black and white photo of handwritten equations on a board, seen at an angle",
        "public-domain",
        "Wikipedia File:Corner.png; no known copyright restrictions, public domain",
        "https://en.wikipedia.org/wiki/File:Corner.png",
    ),
    Photo(
        "horse",
        "a black silhouette of a horse on a white background",
        "CC0-1.0",
        "openclipart; CC0 given by the owner (Andreas Preuss, marauder)",
        "http://openclipart.org/detail/158377/horse-by-marauder",
    ),
    Photo(
        "immunohistochemistry",
        "a microscope image of stained colon tissue with brown glands and small blue cells",
        "public-domain",
        "Center for Microscopy And Molecular Imaging (CMMI); no known copyright restrictions",
        "https://scikit-image.org/docs/stable/api/skimage.data.html",
    ),
)
