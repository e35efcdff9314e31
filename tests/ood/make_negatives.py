#!/usr/bin/env python3
"""Writes the images that are NOT frontal chest X-rays, used to measure the not-a-chest-X-ray gate
(`trainer export --ood-negatives tests/ood`) and by the page's OOD test.

Two sources, all scaled to at most 256 px a side:
- sample photos and scientific images bundled in the scikit-image wheel (skimage/data; each is
  CC0 or public domain according to scikit-image's documentation): pass the unpacked wheel's
  skimage/data folder as the first argument;
- two DICOM slices from pydicom's test data (a CT and an MR; MIT licence), copied by hand;
- drawings made here: a text document, a page screenshot, a chart, a form, noise, gradients.

python3 -m venv /tmp/v && /tmp/v/bin/pip install pillow numpy && pip download --no-deps scikit-image
unzip scikit_image-*.whl 'skimage/data/*' && /tmp/v/bin/python tests/ood/make_negatives.py skimage/data
"""
import sys
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

HERE = Path(__file__).resolve().parent
SKIMAGE = ["astronaut.png", "brick.png", "camera.png", "cell.png", "chelsea.png", "clock_motion.png", "coffee.png",
           "coins.png", "color.png", "grass.png", "gravel.png", "horse.png", "hubble_deep_field.jpg", "ihc.png",
           "logo.png", "moon.png", "motorcycle_left.png", "page.png", "phantom.png", "retina.jpg", "rocket.jpg", "text.png"]


def small(im):
    im = im.convert("RGB") if im.mode not in ("L", "RGB") else im
    im.thumbnail((256, 256), Image.LANCZOS)
    return im


data = Path(sys.argv[1])
for name in SKIMAGE:
    small(Image.open(data / name)).save(HERE / (Path(name).stem + ".png"), optimize=True)

rng = np.random.default_rng(11)
W = 256
doc = Image.new("L", (W, W), 250)
d = ImageDraw.Draw(doc)
for y in range(20, 240, 12):
    x = 16
    while x < 230:
        w = int(rng.integers(8, 40))
        d.rectangle([x, y, min(x + w, 240), y + 5], fill=40)
        x += w + 6
doc.save(HERE / "drawn-document.png")

shot = Image.new("RGB", (W, 160), (247, 248, 250))
d = ImageDraw.Draw(shot)
d.rectangle([0, 0, W, 22], fill=(36, 99, 235))
d.rectangle([12, 34, 244, 80], outline=(154, 164, 181), width=2)
d.rectangle([80, 50, 176, 66], fill=(36, 99, 235))
for i in range(4):
    d.rectangle([12, 92 + i * 16, 200 - 30 * i, 100 + i * 16], fill=(91, 98, 112))
shot.save(HERE / "drawn-screenshot.png")

chart = Image.new("RGB", (W, 200), "white")
d = ImageDraw.Draw(chart)
d.line([20, 180, 240, 180], fill="black", width=2)
d.line([20, 180, 20, 10], fill="black", width=2)
for i, h in enumerate([60, 120, 90, 150, 40, 110]):
    d.rectangle([30 + i * 35, 180 - h, 55 + i * 35, 180], fill=(36, 99, 235))
chart.save(HERE / "drawn-chart.png")

form = Image.new("L", (200, W), 255)
d = ImageDraw.Draw(form)
for y in range(20, 250, 30):
    d.rectangle([20, y, 180, y + 18], outline=0)
form.save(HERE / "drawn-form.png")

Image.fromarray(rng.integers(0, 256, (W, W), dtype=np.uint8)).save(HERE / "noise.png")
Image.fromarray(np.tile(np.linspace(0, 255, W, dtype=np.uint8), (W, 1))).save(HERE / "gradient.png")
yy, xx = np.mgrid[0:W, 0:W]
Image.fromarray(((np.hypot(xx - 128, yy - 128) < 90) * 200 + 30).astype(np.uint8)).save(HERE / "disc.png")
Image.fromarray((((xx // 32 + yy // 32) % 2) * 255).astype(np.uint8)).save(HERE / "checkerboard.png")
print(len(list(HERE.glob("*.png"))), "images")
