"""The exits picture: HTML from doc._.early_exit, and the page as a real browser draws it."""
import html
import json
import os
import re
import struct
import zlib
from pathlib import Path
from typing import List, Set, Tuple

import pytest
import spacy
from spacy.tokens import Doc, Span
from typer.testing import CliRunner

import spacy_early_exit
from spacy_early_exit.cli import app
from spacy_early_exit.pipes.base import EXTENSION  # registers doc._.early_exit
from spacy_early_exit.tools.palette import contrast_ratio, layer_color, oklab, relative_luminance
from spacy_early_exit.tools.visualize import BROWSERS, exit_setting, find_browser, render, screenshot

CHROMIUM = Path("/usr/bin/chromium")
TOKEN_SPAN = re.compile(r'<span class="tokee-token[ "]')


def processed_doc(words: List[str], layers: List[int], flops: int = 100, full_flops: int = 250) -> Doc:
    """A doc with an early-exit record, as tokee_ner leaves it, built by hand."""
    doc = Doc(spacy.blank("en").vocab, words=words)
    doc._.set(EXTENSION, {"tokee_ner": {"exit_layers": layers, "flops": flops, "full_flops": full_flops}})
    return doc


@pytest.fixture
def doc() -> Doc:
    doc = processed_doc(["Ada", "Lovelace", "wrote", "<b>", "&", '"notes"', "in", "London"], [1, 2, 3, 6, 6, 4, 1, 2])
    doc.ents = [Span(doc, 0, 2, "PER"), Span(doc, 7, 8, "LOC")]
    return doc


def test_one_span_per_token_and_the_legend(doc):
    page = render(doc, num_layers=6)
    assert page.startswith("<!DOCTYPE html>") and page.rstrip().endswith("</html>")
    assert len(TOKEN_SPAN.findall(page)) == len(doc)
    body = page.split("<body>", 1)[1]  # the stylesheet names data-layer="0" too
    assert [int(n) for n in re.findall(r'data-layer="(\d+)"', body)] == doc._.early_exit["tokee_ner"]["exit_layers"]
    legend = re.search(r'<div class="tokee-legend">(.*?)</div>', page).group(1)
    assert re.findall(r'class="tokee-swatch"[^>]*>(\d+)<', legend) == [str(n) for n in range(1, 7)]
    assert "full depth" in legend and "no wordpieces" in legend
    assert "FLOPs speed-up <b>2.50\u00d7</b>" in page  # 250 / 100
    # Self-contained: no script, no external stylesheet, font or image.
    assert "<script" not in page and "http" not in page and "<link" not in page


def test_text_is_escaped(doc):
    page = render(doc, num_layers=6)
    assert "&lt;b&gt;" in page and "&amp;" in page and "&quot;notes&quot;" in page
    body = page.split("<body>", 1)[1]
    assert "<b>" not in body.replace("<b>2.50", "")  # only the speed-up's own bold
    assert '"notes"' not in body


def test_entities_are_shown_under_their_first_token(doc):
    page = render(doc, num_layers=6)
    assert re.findall(r'<span class="tokee-under">([^<]+)</span>', page) == ["PER", "LOC"]
    assert page.count('class="tokee-token tokee-ent"') == 3  # Ada, Lovelace, London


def test_tags_are_shown_over_tokens():
    doc = processed_doc(["Ada", "wrote"], [1, 2])
    doc[0].pos_, doc[1].pos_ = "PROPN", "VERB"
    page = render(doc, num_layers=2)
    assert re.findall(r'<span class="tokee-over">([^<]*)</span>', page) == ["PROPN", "VERB"]
    assert "tokee-under" not in page.split("<body>", 1)[1]


def test_several_docs_fragment_and_depth():
    docs = [processed_doc(["a", "b"], [1, 1], 10, 40), processed_doc(["c"], [0], 10, 10)]
    fragment = render(docs, page=False)
    assert "<html" not in fragment and fragment.startswith("<style>")
    assert fragment.count('class="tokee-doc"') == 2
    assert "over all of them 2.50\u00d7" in fragment  # 50 / 20
    assert 'data-layer="0" style' in fragment
    with pytest.raises(ValueError, match="deeper than num_layers=1"):
        render(processed_doc(["a"], [3]), num_layers=1)


def test_missing_or_mismatched_record_is_a_clear_error():
    plain = spacy.blank("en")("no record here")
    with pytest.raises(ValueError, match="Doc 0 has no early-exit record"):
        render(plain)
    doc = processed_doc(["a", "b"], [1, 1])
    with pytest.raises(ValueError, match="no early-exit record for 'tokee_tagger'; it has \\['tokee_ner'\\]"):
        render(doc, component="tokee_tagger")
    short = processed_doc(["a", "b"], [1])
    with pytest.raises(ValueError, match="1 exit layers for 2 tokens"):
        render(short)
    with pytest.raises(ValueError, match="labels must be one of"):
        render(doc, labels="colour")


def test_layer_colours_get_darker_and_stay_distinct():
    colours = [layer_color(layer, 6)[0] for layer in range(0, 7)]
    assert len(set(colours)) == 7
    brightness = [sum(int(c[i : i + 2], 16) for i in (1, 3, 5)) for c in colours[1:]]
    assert brightness == sorted(brightness, reverse=True)


def test_wcag_contrast_ratio_matches_known_values():
    assert relative_luminance("#000000") == 0 and relative_luminance("#ffffff") == pytest.approx(1)
    assert contrast_ratio("#000000", "#ffffff") == pytest.approx(21)
    assert contrast_ratio("#ffffff", "#000000") == pytest.approx(21)
    assert contrast_ratio("#777777", "#777777") == 1
    assert contrast_ratio("#767676", "#ffffff") == pytest.approx(4.54, abs=0.01)  # the well-known AA grey


@pytest.mark.parametrize("num_layers", range(1, 25))
def test_every_layer_colour_is_readable(num_layers):
    # WCAG 2.x AA for normal text: the token text and the small bold labels
    # (entity types, tags) are drawn in this ink on this background.
    for layer in range(0, num_layers + 1):
        background, ink = layer_color(layer, num_layers)
        assert contrast_ratio(background, ink) >= 4.5, (layer, num_layers, background, ink)


@pytest.mark.parametrize("num_layers", range(2, 25))
def test_neighbouring_layer_colours_differ_noticeably(num_layers):
    # OKLab is built so that Euclidean distance follows perceived difference; a
    # just-noticeable difference there is about 0.02 (roughly CIELAB's 2.3), so
    # neighbours must be at least 0.025 apart at any depth up to 24 layers and
    # about three JNDs (0.06) apart up to 12 layers, where a 6-layer and a
    # 12-layer model have to read at a glance. Lightness alone must fall at
    # every step too, which orders the layers for every kind of colour vision.
    points = [oklab(layer_color(layer, num_layers)[0]) for layer in range(1, num_layers + 1)]
    gaps = [sum((a - b) ** 2 for a, b in zip(p, q)) ** 0.5 for p, q in zip(points, points[1:])]
    assert min(gaps) >= (0.06 if num_layers <= 12 else 0.025), (num_layers, gaps)
    steps = [p[0] - q[0] for p, q in zip(points, points[1:])]
    assert min(steps) >= 0.02, (num_layers, steps)
    # Every layer colour also stands apart from the box of tokens with no wordpieces.
    none = oklab(layer_color(0, num_layers)[0])
    assert all(sum((a - b) ** 2 for a, b in zip(p, none)) ** 0.5 >= 0.06 for p in points)


def test_the_first_six_of_twelve_layers_are_distinct():
    points = [oklab(layer_color(layer, 12)[0]) for layer in range(1, 7)]
    for i, p in enumerate(points):
        for q in points[i + 1 :]:
            assert sum((a - b) ** 2 for a, b in zip(p, q)) ** 0.5 >= 0.06


SETTING = {
    "pipeline": "training/demo/final-2x",
    "components": ["tokee_ner", "tokee_tagger"],
    "component": "tokee_ner",
    "exit_mode": "tokee",
    "threshold": 0.1,
    "thresholds": [0.0, 0.05, 0.125, 1.0, 1.0, 1.0],
    "window": 2,
    "precision": "bf16",
    "temperatures": [1.5, 1.25, 1.0, 1.0, 0.75, 0.5],
    "config": "configs/2x.json",
    "config_keys": ["components.tokee_ner.thresholds", "components.tokee_ner.window"],
    "run_overrides": {},
}


def setting_text(page: str) -> str:
    """The setting box's words: tags dropped, entities decoded, spaces collapsed."""
    box = re.search(r'<div class="tokee-setting">(.*?)</div>', page).group(1)
    return " ".join(html.unescape(re.sub(r"<[^>]+>", " ", box)).split())


def test_the_page_states_the_exit_setting(doc):
    page = render(doc, num_layers=6, setting=SETTING)
    text = setting_text(page)
    assert "pipeline training/demo/final-2x" in text
    assert "component tokee_ner (also in the pipeline: tokee_tagger)" in text
    assert "exit_mode tokee" in text and "window k = 2" in text and "precision bf16" in text
    assert "thresholds per layer 0 \u00b7 0.05 \u00b7 0.125 \u00b7 1 \u00b7 1 \u00b7 1" in text
    assert "threshold 0.1" not in text  # per-layer thresholds override it
    assert "temperatures calibrated (1.5 \u00b7 1.25" in text
    assert "config configs/2x.json applied at load time (sets thresholds, window)" in text
    assert "FLOPs speed-up 2.50\u00d7 over 1 doc" in text
    plain = dict(SETTING, thresholds=None, temperatures=None, config=None, config_keys=[], run_overrides={"threshold": 1.0})
    text = setting_text(render(doc, setting=plain))
    assert "threshold 0.1" in text and "temperatures not calibrated" in text
    assert "config the pipeline's own (no --config)" in text
    assert "this run threshold = 1 (per-layer thresholds cleared)" in text
    # Values are escaped like the text.
    assert "&lt;x&gt;" in render(doc, setting=dict(SETTING, pipeline="<x>"))
    assert 'class="tokee-setting"' not in render(doc)


def test_exit_setting_reads_the_pipe(trained_ner):
    setting = exit_setting(trained_ner, pipeline="somewhere/final", config="2x.json", config_keys=["components.tokee_ner.window"])
    assert setting["component"] == "tokee_ner" and setting["components"] == ["tokee_ner"]
    assert setting["exit_mode"] == "tokee" and setting["threshold"] == 0.5 and setting["window"] == 1
    assert setting["thresholds"] is None and setting["temperatures"] == [0.25] * 4 and setting["precision"] == "fp32"
    assert setting["pipeline"] == "somewhere/final" and setting["config"] == "2x.json" and setting["num_layers"] == 4
    with pytest.raises(ValueError, match="No early-exit component 'tokee_tagger'"):
        exit_setting(trained_ner, "tokee_tagger")


def test_render_is_exported():
    assert spacy_early_exit.render is render


def test_visualize_command_writes_the_page(trained_ner, tmp_path):
    trained_ner.to_disk(tmp_path / "pipeline")
    texts = tmp_path / "texts.txt"
    texts.write_text("Mary said apple will have a new city\n\nThey were in Paris with John\n", encoding="utf8")
    output = tmp_path / "out" / "exits.html"
    args = ["visualize", str(tmp_path / "pipeline"), "John Smith lives in <London> & \"York\"", "--file", str(texts)]
    result = CliRunner().invoke(app, args + ["--output", str(output), "--threshold", "1.0"])
    assert result.exit_code == 0, result.output
    page = output.read_text(encoding="utf8")
    assert page.count('class="tokee-doc"') == 3
    assert ">&lt;<" in page and ">&gt;<" in page and ">&amp;<" in page and "&quot;" in page
    assert "<London" not in page
    # Threshold 1.0: every token leaves at the first off-ramp.
    assert set(re.findall(r'data-layer="(\d+)"', page.split("<body>", 1)[1])) == {"1"}
    setting = setting_text(page)
    assert f"pipeline {tmp_path / 'pipeline'}" in setting and "component tokee_ner" in setting
    assert "exit_mode tokee" in setting and "threshold 1 " in setting and "window k = 1" in setting
    assert "precision fp32" in setting and "temperatures calibrated (0.25" in setting
    assert "config the pipeline's own (no --config)" in setting
    assert "this run threshold = 1 (per-layer thresholds cleared)" in setting and "FLOPs speed-up" in setting
    # A tuned config applied at load time is named on the page.
    tuned = tmp_path / "2x.json"
    tuned.write_text(json.dumps({"components.tokee_ner.window": 0, "components.tokee_ner.threshold": 0.25}), encoding="utf8")
    result = CliRunner().invoke(app, ["visualize", str(tmp_path / "pipeline"), "Mary said", "--output", str(output), "--config", str(tuned)])
    assert result.exit_code == 0, result.output
    setting = setting_text(output.read_text(encoding="utf8"))
    assert f"config {tuned} applied at load time (sets threshold, window)" in setting
    assert "threshold 0.25" in setting and "window k = 0" in setting and "this run" not in setting
    result = CliRunner().invoke(app, ["visualize", str(tmp_path / "pipeline"), "--output", str(output)])
    assert result.exit_code == 2 and "Nothing to show" in result.stderr


# ---------------------------------------------------------------- a real browser


def png_pixels(path: Path) -> Set[Tuple[int, ...]]:
    """The distinct pixel colours of a PNG: with Pillow, or decoded here (8-bit RGB/RGBA, not interlaced)."""
    try:
        from PIL import Image
    except ImportError:
        return decode_png(path.read_bytes())
    with Image.open(path) as image:
        colours = image.convert("RGB").getcolors(maxcolors=image.width * image.height)
        return {colour for _, colour in colours}


def decode_png(data: bytes) -> Set[Tuple[int, ...]]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    pos, idat, header = 8, b"", None
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind, body = data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + length]
        header = body if kind == b"IHDR" else header
        idat += body if kind == b"IDAT" else b""
        pos += 12 + length
    width, height, depth, colour, _, _, interlace = struct.unpack(">IIBBBBB", header)
    assert depth == 8 and colour in (2, 6) and interlace == 0, "only 8-bit RGB/RGBA, non-interlaced"
    channels = 3 if colour == 2 else 4
    stride = width * channels
    raw, previous, colours = zlib.decompress(idat), bytearray(stride), set()
    for row in range(height):
        kind, line = raw[row * (stride + 1)], bytearray(raw[row * (stride + 1) + 1 : (row + 1) * (stride + 1)])
        for i in range(stride):
            left = line[i - channels] if i >= channels else 0
            up, corner = previous[i], previous[i - channels] if i >= channels else 0
            if kind == 1:
                line[i] = (line[i] + left) & 255
            elif kind == 2:
                line[i] = (line[i] + up) & 255
            elif kind == 3:
                line[i] = (line[i] + (left + up) // 2) & 255
            elif kind == 4:
                p = left + up - corner
                pa, pb, pc = abs(p - left), abs(p - up), abs(p - corner)
                line[i] = (line[i] + (left if pa <= pb and pa <= pc else up if pb <= pc else corner)) & 255
        colours.update(tuple(line[i : i + 3]) for i in range(0, stride, channels))
        previous = line
    return colours


def test_decode_png_matches_a_known_image(tmp_path):
    # A 2x1 RGB PNG written by hand: one red, one blue pixel.
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    raw = b"\x00" + bytes([255, 0, 0, 0, 0, 255])
    png = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 2, 1, 8, 2, 0, 0, 0))
    png += chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")
    assert decode_png(png) == {(255, 0, 0), (0, 0, 255)}


def needs_chromium() -> None:
    if CHROMIUM.exists():
        return
    reason = f"{CHROMIUM} is missing: install Debian's chromium (apt-get install -y chromium; scripts/install.sh does as root)"
    if os.environ.get("CI"):
        pytest.fail(f"CI is set, so the browser test must run: {reason}")
    pytest.skip(reason)


@pytest.mark.slow
def test_the_page_renders_in_headless_chromium(doc, tmp_path):
    needs_chromium()
    page = tmp_path / "exits.html"
    page.write_text(render(doc, num_layers=6, title="Browser test", setting=SETTING), encoding="utf8")
    png = screenshot(page, tmp_path / "exits.png", width=700, height=300, browser=str(CHROMIUM))
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    colours = png_pixels(png)
    assert len(colours) > 20, f"a blank page: {len(colours)} colours"
    # The CSS was applied: the full-depth colour of the legend is on screen.
    deepest = tuple(int(layer_color(6, 6)[0][i : i + 2], 16) for i in (1, 3, 5))
    assert any(max(abs(a - b) for a, b in zip(pixel, deepest)) <= 8 for pixel in colours), deepest


@pytest.mark.slow
def test_find_browser_sees_chromium():
    needs_chromium()
    found = find_browser()
    assert found is not None and Path(found).name in BROWSERS and os.access(found, os.X_OK)


def test_find_browser_searches_path_in_order(tmp_path, monkeypatch):
    # Fake executables on an otherwise empty PATH: the first name in BROWSERS wins.
    for name in ("google-chrome", "chromium-browser"):
        fake = tmp_path / name
        fake.write_text("#!/bin/sh\n", encoding="utf8")
        fake.chmod(0o755)
    monkeypatch.setenv("PATH", str(tmp_path))
    assert find_browser() == str(tmp_path / "chromium-browser")
    monkeypatch.setenv("PATH", str(tmp_path / "nothing-here"))
    assert find_browser() is None
