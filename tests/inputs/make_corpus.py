#!/usr/bin/env python3
"""Writes the bad- and unusual-input corpus in this folder, plus manifest.json.

The files are committed, so tests need neither Python nor Pillow; run this only to change the
corpus (python3 -m venv /tmp/v && /tmp/v/bin/pip install pillow numpy && /tmp/v/bin/python
tests/inputs/make_corpus.py). The picture inside the valid files is tests/fixtures/normal0.png
(a real NIH chest X-ray) at 128x128, so every file stays small.

manifest.json lists, per file: what kind of input it is, and what must happen:
  "classify" - a valid but unusual image: it is classified (CLI exit 0, the page shows a result);
  "error"    - the CLI exits non-zero with the given error code, the page shows the message.
"same_as" names a file that must give (nearly) the same probability, for the valid files whose
content equals another's (EXIF rotation undone, a misleading extension, 16-bit vs 8-bit...).
"""
import io
import json
import os
import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

HERE = Path(__file__).resolve().parent
BASE = Image.open(HERE.parent / "fixtures" / "normal0.png").convert("L").resize((128, 128), Image.LANCZOS)
GREY = np.asarray(BASE)
entries = []


def add(name, data, kind, expect, code=None, same_as=None):
    (HERE / name).write_bytes(data)
    entry = {"file": name, "kind": kind, "expect": expect}
    if code:
        entry["code"] = code
    if same_as:
        entry["same_as"] = same_as
    entries.append(entry)


def save(image, fmt, **kw):
    out = io.BytesIO()
    image.save(out, fmt, **kw)
    return out.getvalue()


def chunk(kind, body):
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def png_header(width, height, depth=8, colour=0):
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, depth, colour, 0, 0, 0))


reference = save(BASE, "PNG")
jpeg = save(BASE, "JPEG", quality=92)
tiff = save(BASE, "TIFF")
gif = save(BASE.convert("P"), "GIF")
webp = save(BASE, "WEBP", quality=90)

# ---- valid but unusual: must be classified ----
add("grey8.png", reference, "8-bit greyscale PNG (the reference picture)", "classify")
grey16 = Image.fromarray((GREY.astype(np.uint16) * 257))
add("grey16.png", save(grey16, "PNG"), "16-bit greyscale PNG", "classify", same_as="grey8.png")
add("grey16.tiff", save(grey16, "TIFF"), "16-bit greyscale TIFF", "classify", same_as="grey8.png")
rgb = Image.merge("RGB", [BASE] * 3)
add("rgb.png", save(rgb, "PNG"), "RGB PNG of a grey picture", "classify", same_as="grey8.png")
rgba = np.dstack([GREY] * 3 + [np.full_like(GREY, 255)])
rgba[:, :20, 3] = 0  # a transparent band on the left, grey values kept underneath
add("rgba-transparent.png", save(Image.fromarray(rgba), "PNG"), "RGBA PNG with a transparent band", "classify", same_as="grey8.png")
add("grey-alpha.png", save(Image.merge("LA", [BASE, Image.new("L", BASE.size, 200)]), "PNG"), "grey + alpha PNG", "classify", same_as="grey8.png")
add("palette.png", save(BASE.convert("P", palette=Image.ADAPTIVE, colors=256), "PNG"), "palette (indexed) PNG", "classify")
add("grey.jpg", jpeg, "greyscale baseline JPEG", "classify")
add("progressive.jpg", save(BASE, "JPEG", quality=92, progressive=True), "progressive JPEG", "classify", same_as="grey.jpg")
add("cmyk.jpg", save(Image.merge("CMYK", [Image.new("L", BASE.size, 0)] * 3 + [Image.eval(BASE, lambda v: 255 - v)]), "JPEG", quality=92), "CMYK JPEG", "classify")
rotated = BASE.transpose(Image.ROTATE_90)  # stored on its side; EXIF orientation 6 turns it upright
exif = Image.Exif()
exif[0x0112] = 6
add("exif-rotated.jpg", save(rotated, "JPEG", quality=92, exif=exif), "JPEG stored sideways with an EXIF rotation", "classify")
add("upright.jpg", save(BASE, "JPEG", quality=92), "the same JPEG stored upright", "classify", same_as="exif-rotated.jpg")
frames = [BASE.convert("P"), Image.eval(BASE, lambda v: 255 - v).convert("P")]
add("animated.gif", save(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=200, loop=0), "animated GIF (first frame is used)", "classify", same_as="still.gif")
add("still.gif", gif, "single-frame GIF", "classify")
pages = [BASE, Image.eval(BASE, lambda v: 255 - v)]
add("multipage.tiff", save(pages[0], "TIFF", save_all=True, append_images=pages[1:]), "TIFF with two pages (the first is used)", "classify", same_as="grey8.png")
add("image.bmp", save(BASE, "BMP"), "BMP", "classify", same_as="grey8.png")
add("lossless.webp", save(BASE, "WEBP", lossless=True), "lossless WebP", "classify", same_as="grey8.png")
add("lossy.webp", webp, "lossy WebP", "classify")
add("png-named.jpg", reference, "PNG with a .jpg extension", "classify", same_as="grey8.png")
add("jpeg-named.png", jpeg, "JPEG with a .png extension", "classify", same_as="grey.jpg")
add("float32.tiff", save(Image.fromarray(GREY.astype(np.float32) / 255.0), "TIFF"), "32-bit float greyscale TIFF", "classify", same_as="grey8.png")
wide = BASE.resize((4000, 10), Image.BILINEAR)
add("wide-4000x10.png", save(wide, "PNG"), "extreme aspect ratio (4000x10)", "classify")
# 8000x8000: the picture scaled up by nearest neighbour, which PNG compresses to a small file.
big = BASE.resize((64, 64), Image.LANCZOS).resize((8000, 8000), Image.NEAREST)
add("huge-8000.png", save(big, "PNG", optimize=True), "huge but valid image (8000x8000)", "classify")

# ---- bad: must give a clear error ----
add("empty.png", b"", "0-byte file", "error", "empty")
add("text.png", b"Patient notes: no acute findings.\nThis is a text file renamed to .png\n", "text renamed .png", "error", "unsupported_format")
add("document.png", b"%PDF-1.4\n1 0 obj\n<< /Type /Catalog >>\nendobj\ntrailer\n<< /Root 1 0 R >>\n%%EOF\n", "PDF renamed .png", "error", "unsupported_format")
add("page.jpg", b"<!DOCTYPE html><html><body><img src=x.png></body></html>\n", "web page renamed .jpg", "error", "unsupported_format")
add("drawing.svg", b'<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"><rect width="10" height="10"/></svg>\n', "SVG drawing", "error", "unsupported_format")
broken_dicom = bytearray(128) + b"DICM" + struct.pack("<HH4sHI", 2, 0, b"UL", 4, 0)  # preamble, magic, start of meta group
add("scan.dcm", bytes(broken_dicom) + bytes(256), "DICOM file cut off in its header", "error", "corrupt")
add("archive.png", b"PK\x03\x04" + bytes(60), "ZIP archive renamed .png", "error", "unsupported_format")
add("random.png", np.random.default_rng(7).integers(0, 256, 4096, dtype=np.uint8).tobytes(), "random bytes", "error", "unsupported_format")
add("truncated.png", reference[: len(reference) // 2], "truncated PNG", "error", "corrupt")
add("truncated.jpg", jpeg[: len(jpeg) // 2], "truncated JPEG", "error", "corrupt")
add("truncated.tiff", tiff[: len(tiff) // 2], "truncated TIFF", "error", "corrupt")
add("truncated.webp", webp[: len(webp) // 2], "truncated WebP", "error", "corrupt")
bad_crc = bytearray(reference)
idat = bad_crc.index(b"IDAT")
bad_crc[idat + 10] ^= 0xFF  # a flipped byte in the compressed data: the chunk CRC no longer matches
add("bad-crc.png", bytes(bad_crc), "PNG with a wrong chunk CRC", "error", "corrupt")
no_idat = png_header(16, 16) + chunk(b"IEND", b"")
add("no-data.png", no_idat, "PNG header with no image data", "error", "corrupt")
# A decompression bomb: the header claims 60000x60000 pixels (3.6 gigapixels).
add("bomb-60000.png", png_header(60000, 60000) + chunk(b"IDAT", zlib.compress(bytes(60001 * 8))) + chunk(b"IEND", b""), "PNG claiming 60000x60000 (decompression bomb)", "error", "too_large")
jpeg_big = bytearray(jpeg)
sof = jpeg_big.index(b"\xff\xc0")
jpeg_big[sof + 5 : sof + 9] = struct.pack(">HH", 65000, 65000)
add("bomb-65000.jpg", bytes(jpeg_big), "JPEG claiming 65000x65000", "error", "too_large")
add("zero-width.png", png_header(0, 16) + chunk(b"IEND", b""), "PNG with width 0", "error")
add("one-pixel.png", save(Image.new("L", (1, 1), 90), "PNG"), "1x1 image", "error", "blank")
add("blank.png", save(Image.new("L", (256, 256), 128), "PNG"), "constant (blank) image", "error", "blank")
add("blank16.png", save(Image.fromarray(np.full((64, 64), 40000, np.uint16)), "PNG"), "constant 16-bit image", "error", "blank")
nan = (GREY.astype(np.float32) / 255.0)
nan[10:20, 10:20] = np.nan
nan[40:50, 40:50] = np.inf
add("nan-inf.tiff", save(Image.fromarray(nan), "TIFF"), "float TIFF with NaN and infinity", "error", "non_finite")
add("bad-header.bmp", b"BM" + bytes(50), "BMP with a broken header", "error", "corrupt")
add("header-only.jpg", b"\xff\xd8\xff\xe0\x00\x10JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x00\x00\xff\xd9", "JPEG with headers and no image", "error", "corrupt")

# ---- DICOM: made here with pydicom (16-bit, MONOCHROME1 and 2, rescale, window, no extension), and
# real files from pydicom's test data (MIT licence), which the pydicom wheel ships ----
import pydicom
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid


def dicom(pixels, photometric="MONOCHROME2", slope=None, intercept=None, window=None, syntax=ExplicitVRLittleEndian, signed=False):
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = "1.2.826.0.1.3680043.8.498.1"
    meta.TransferSyntaxUID = syntax
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "CR"
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    bits = pixels.dtype.itemsize * 8
    ds.BitsAllocated = bits
    ds.BitsStored = bits
    ds.HighBit = bits - 1
    ds.PixelRepresentation = 1 if signed else 0
    if slope is not None:
        ds.RescaleSlope = str(slope)
        ds.RescaleIntercept = str(intercept)
    if window is not None:
        ds.WindowCenter, ds.WindowWidth = str(window[0]), str(window[1])
    ds.PixelData = pixels.tobytes()
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True, little_endian=True, implicit_vr=(syntax == ImplicitVRLittleEndian))
    return out.getvalue()


g16 = GREY.astype(np.uint16) * 257
add("xray16.dcm", dicom(g16), "16-bit MONOCHROME2 DICOM", "classify", same_as="grey8.png")
add("xray16-monochrome1.dcm", dicom((65535 - g16).astype(np.uint16), "MONOCHROME1"), "16-bit MONOCHROME1 DICOM (stored inverted)", "classify", same_as="grey8.png")
# Stored values s with slope 4, intercept -1000: real values 4 s - 1000 (a linear map: same picture).
add("xray-rescaled.dcm", dicom(GREY.astype(np.uint16) * 3, slope=4, intercept=-1000), "DICOM with rescale slope and intercept", "classify", same_as="grey8.png")
add("xray-signed.dcm", dicom((GREY.astype(np.int16) - 128) * 100, signed=True), "signed 16-bit DICOM", "classify", same_as="grey8.png")
add("xray-implicit.dcm", dicom(GREY.astype(np.uint8), syntax=ImplicitVRLittleEndian), "8-bit DICOM, implicit VR", "classify", same_as="grey8.png")
add("xray-windowed.dcm", dicom(g16, window=(30000, 30000)), "DICOM with a VOI window (applied)", "classify")
add("dicom-without-extension", dicom(g16), "DICOM with no extension (found by its DICM magic)", "classify", same_as="grey8.png")
for name, kind, expect, code in [
    ("CT_small.dcm", "real CT slice (pydicom test data), 16-bit signed with rescale", "classify", None),
    ("MR_small_RLE.dcm", "real MR slice, RLE compressed (pydicom test data)", "classify", None),
    ("JPEG-lossy.dcm", "real DICOM in 12-bit JPEG Extended, which the pure-Rust decoder lacks", "error", "unsupported_dicom"),
    ("SC_rgb_jpeg_gdcm.dcm", "real RGB DICOM, baseline JPEG (pydicom test data)", "classify", None),
    ("MR_small.dcm", "real MR slice, explicit VR little endian (pydicom test data)", "classify", None),
    ("JPEG2000.dcm", "DICOM in JPEG 2000 (a syntax this build cannot decode)", "error", "unsupported_dicom"),
    ("MR_small_jpeg_ls_lossless.dcm", "DICOM in JPEG-LS (a syntax this build cannot decode)", "error", "unsupported_dicom"),
    ("MR_truncated.dcm", "truncated real DICOM (pydicom test data)", "error", "corrupt"),
]:
    add("pydicom-" + name, Path(get_testdata_file(name)).read_bytes(), kind, expect, code)

(HERE / "manifest.json").write_text(json.dumps(entries, indent=1) + "\n")
print(f"{len(entries)} files, {sum((HERE / e['file']).stat().st_size for e in entries) / 1e6:.2f} MB")
