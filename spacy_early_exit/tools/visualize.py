"""A picture of the exits: HTML with each token shaded by the layer it left at.

`render(doc)` reads `doc._.early_exit[component]` (the record every early-exit
pipe writes) and returns one self-contained page, no script and no external
file, in the spirit of displaCy: the text as it reads, each token a box whose
colour is its exit layer, the entities (or tags) beside the tokens, a legend
of the layers, each doc's FLOPs speed-up and, given `setting=exit_setting(nlp)`,
the exit setting that produced it. `screenshot` saves a PNG of such
a page with a headless Chromium, for READMEs and tests.
"""
import functools
import html
import math
import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple, Union

from spacy.tokens import Doc, Token

from ..pipes.record import EXTENSION

LABEL_MODES = ("auto", "ents", "tags", "none")
BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
NO_PIECES = "#e9e9e9"  # tokens with no wordpieces (exit layer 0)

CSS = """
.tokee { font-family: -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; color: #1b1b1b; max-width: 60em; padding: 1em; }
.tokee h1 { font-size: 1.15em; margin: 0 0 0.4em 0; }
.tokee-summary { color: #444; margin-bottom: 0.6em; }
.tokee-setting { display: flex; flex-wrap: wrap; gap: 0.25em 1.1em; font-size: 0.85em; color: #222; background: #f4f4f4;
  border-left: 3px solid #555; padding: 0.35em 0.6em; margin-bottom: 0.7em; }
.tokee-setting b { color: #000; }
.tokee-setting-key { color: #444; }
.tokee-legend { display: flex; flex-wrap: wrap; align-items: center; gap: 0.3em; margin-bottom: 1em; font-size: 0.85em; }
.tokee-swatch { display: inline-block; min-width: 2.2em; padding: 0.15em 0.4em; text-align: center; border-radius: 0.25em; }
.tokee-swatch-none { border: 1px dashed #999; }
.tokee-doc { margin: 0 0 1.2em 0; padding: 0.6em 0.2em; border-top: 1px solid #ddd; }
.tokee-meta { font-size: 0.85em; color: #444; margin-bottom: 0.5em; }
.tokee-text { line-height: 2.6; }
.tokee-token { display: inline-flex; flex-direction: column; align-items: center; vertical-align: top;
  margin: 0.1em 0.05em; padding: 0.05em 0.3em; border-radius: 0.3em; line-height: 1.35; white-space: pre; }
.tokee-token[data-layer="0"] { border: 1px dashed #999; }
.tokee-over, .tokee-under { font-size: 0.62em; font-weight: bold; letter-spacing: 0.03em; min-height: 1.2em; }
.tokee-ent { box-shadow: inset 0 -0.24em 0 #e8590c; }  /* orange: visible on pale and dark boxes */
"""


# The palette runs along a line in OKLab (Björn Ottosson's perceptual colour
# space, where Euclidean distance tracks perceived difference): lightness falls
# evenly from a pale yellow (the first off-ramp) to a deep violet (full depth)
# while the hue turns through green, teal and blue. Cost reads as ink, and
# because lightness alone orders the layers, readers with any kind of colour
# vision deficiency (which leaves lightness mostly intact) still tell them
# apart; the hue turn adds distance between neighbours for everyone else.
PALETTE_LIGHTNESS = (0.94, 0.34)  # OKLab L of layer 1 and of full depth
PALETTE_HUE = (105.0, 300.0)  # OKLCh hue in degrees: yellow ... violet
PALETTE_CHROMA = 0.14  # wanted chroma; lowered where sRGB cannot show it
INKS = ("#000000", "#ffffff")  # text on a layer colour: whichever contrasts more
MIN_CONTRAST = 4.5  # WCAG 2.x level AA for normal text


def _to_linear(channel: float) -> float:
    """An sRGB channel in [0, 1] to linear light (the WCAG 2.x / sRGB formula)."""
    return channel / 12.92 if channel <= 0.04045 else ((channel + 0.055) / 1.055) ** 2.4


def _to_srgb(channel: float) -> float:
    """Linear light in [0, 1] to an sRGB channel in [0, 1]."""
    return 12.92 * channel if channel <= 0.0031308 else 1.055 * channel ** (1 / 2.4) - 0.055


def hex_rgb(colour: str) -> Tuple[int, int, int]:
    """"#rrggbb" to (r, g, b) in 0..255."""
    return int(colour[1:3], 16), int(colour[3:5], 16), int(colour[5:7], 16)


def relative_luminance(colour: str) -> float:
    """WCAG 2.x relative luminance of "#rrggbb": 0 (black) to 1 (white)."""
    red, green, blue = (_to_linear(c / 255) for c in hex_rgb(colour))
    return 0.2126 * red + 0.7152 * green + 0.0722 * blue


def contrast_ratio(first: str, second: str) -> float:
    """WCAG 2.x contrast ratio of two "#rrggbb" colours: 1 (same) to 21 (black on white)."""
    light, dark = sorted((relative_luminance(first), relative_luminance(second)), reverse=True)
    return (light + 0.05) / (dark + 0.05)


def oklab(colour: str) -> Tuple[float, float, float]:
    """"#rrggbb" to OKLab (L, a, b); L runs 0 (black) to 1 (white)."""
    red, green, blue = (_to_linear(c / 255) for c in hex_rgb(colour))
    long = 0.4122214708 * red + 0.5363325363 * green + 0.0514459929 * blue
    medium = 0.2119034982 * red + 0.6806995451 * green + 0.1073969566 * blue
    short = 0.0883024619 * red + 0.2817188376 * green + 0.6299787005 * blue
    lc, mc, sc = (math.copysign(abs(x) ** (1 / 3), x) for x in (long, medium, short))
    return (
        0.2104542553 * lc + 0.7936177850 * mc - 0.0040720468 * sc,
        1.9779984951 * lc - 2.4285922050 * mc + 0.4505937099 * sc,
        0.0259040371 * lc + 0.7827717662 * mc - 0.8086757660 * sc,
    )


def _oklch_linear(lightness: float, chroma: float, hue: float) -> Tuple[float, float, float]:
    """OKLCh to linear-light sRGB, possibly outside [0, 1]."""
    a, b = chroma * math.cos(math.radians(hue)), chroma * math.sin(math.radians(hue))
    lc = (lightness + 0.3963377774 * a + 0.2158037573 * b) ** 3
    mc = (lightness - 0.1055613458 * a - 0.0638541728 * b) ** 3
    sc = (lightness - 0.0894841775 * a - 1.2914855480 * b) ** 3
    return (
        4.0767416621 * lc - 3.3077115913 * mc + 0.2309699292 * sc,
        -1.2684380046 * lc + 2.6097574011 * mc - 0.3413193965 * sc,
        -0.0041960863 * lc - 0.7034186147 * mc + 1.7076147010 * sc,
    )


def oklch_hex(lightness: float, chroma: float, hue: float) -> str:
    """The "#rrggbb" of an OKLCh colour, its chroma lowered (hue and lightness
    kept) until sRGB can show it."""
    low, high = 0.0, chroma
    for _ in range(24):  # bisect the largest chroma in gamut
        middle = (low + high) / 2
        if all(-1e-9 <= c <= 1 + 1e-9 for c in _oklch_linear(lightness, middle, hue)):
            low = middle
        else:
            high = middle
    channels = (_to_srgb(min(max(c, 0.0), 1.0)) for c in _oklch_linear(lightness, low, hue))
    return "#" + "".join(f"{round(255 * c):02x}" for c in channels)


def text_color(background: str) -> str:
    """Black or white, whichever has the higher WCAG contrast with `background`
    (always >= 4.58:1: the two ratios meet at luminance 0.179)."""
    return max(INKS, key=lambda ink: contrast_ratio(ink, background))


@functools.lru_cache(maxsize=None)
def layer_color(layer: int, num_layers: int) -> Tuple[str, str]:
    """The background and text colour of a token that exited at `layer`.

    Early exits are pale and full depth is dark, so the eye reads cost as ink;
    lightness falls in even OKLab steps (0.6 / (num_layers - 1) each) and the
    hue turns from yellow to violet on the way, so neighbouring layers stay
    apart even in a long encoder and for colour-blind readers. The text is
    black or white, whichever contrasts more (WCAG ratio >= 4.5 for all).

    layer (int): the 1-based exit layer, 0 for a token with no wordpieces.
    num_layers (int): the encoder depth (the darkest colour).
    RETURNS (Tuple[str, str]): CSS colours "#rrggbb" for background and text.
    """
    if layer <= 0:
        return NO_PIECES, "#555555"
    share = 0.0 if num_layers <= 1 else (layer - 1) / (num_layers - 1)
    (light_start, light_end), (hue_start, hue_end) = PALETTE_LIGHTNESS, PALETTE_HUE
    background = oklch_hex(
        light_start + (light_end - light_start) * share, PALETTE_CHROMA, hue_start + (hue_end - hue_start) * share
    )
    return background, text_color(background)


def exit_record(doc: Doc, component: Optional[str], index: int = 0) -> Tuple[str, Dict]:
    """The early-exit record of one doc, checked against the doc.

    doc (Doc): a processed doc.
    component (Optional[str]): the component's name; None = the doc's only record.
    index (int): the doc's position, for error messages.
    RETURNS (Tuple[str, Dict]): the component name and its record.
    RAISES (ValueError): the doc has no record (for that component), or it does
        not match the doc's tokens.
    """
    records = doc._.get(EXTENSION) if Doc.has_extension(EXTENSION) else None
    if not records:
        raise ValueError(
            f"Doc {index} has no early-exit record (doc._.{EXTENSION} is empty): run the text through a "
            "pipeline with tokee_ner, tokee_tagger or tokee_segmenter first"
        )
    if component is None:
        if len(records) > 1:
            raise ValueError(f"Doc {index} has early-exit records for {sorted(records)}: pass component=")
        component = next(iter(records))
    if component not in records:
        raise ValueError(f"Doc {index} has no early-exit record for {component!r}; it has {sorted(records)}")
    record = records[component]
    if len(record["exit_layers"]) != len(doc):
        raise ValueError(
            f"Doc {index}: the {component!r} record has {len(record['exit_layers'])} exit layers for "
            f"{len(doc)} tokens (was the doc changed after the component ran?)"
        )
    return component, record


def speedup(record: Dict) -> float:
    """A record's FLOPs speed-up: full-depth FLOPs over the FLOPs computed."""
    return record["full_flops"] / record["flops"] if record["flops"] else 1.0


def label_mode(docs: Sequence[Doc], labels: str) -> str:
    """"ents" or "tags" or "none": what to show beside the tokens.

    docs (Sequence[Doc]): the docs.
    labels (str): one of LABEL_MODES; "auto" = entities when the docs carry
        entity annotation, else tags when they carry tags or POS, else none.
    RETURNS (str): the mode.
    """
    if labels not in LABEL_MODES:
        raise ValueError(f"labels must be one of {LABEL_MODES}; got {labels!r}")
    if labels != "auto":
        return labels
    if any(doc.has_annotation("ENT_IOB") for doc in docs):
        return "ents"
    if any(doc.has_annotation("TAG") or doc.has_annotation("POS") for doc in docs):
        return "tags"
    return "none"


def token_label(token: Token, mode: str) -> Tuple[str, str]:
    """The text over and under a token: its tag over it, or its entity's label under its first token."""
    if mode == "tags":
        return token.tag_ or token.pos_, ""
    if mode == "ents" and token.ent_iob_ == "B":
        return "", token.ent_type_
    return "", ""


def visible_text(token: Token) -> str:
    """The token's text, with line breaks and tabs of whitespace tokens made visible."""
    if token.is_space:
        return token.text.replace("\n", "\u21b5").replace("\t", "\u21e5") or " "
    return token.text


def render_token(token: Token, layer: int, num_layers: int, mode: str) -> str:
    """One token's box: <span class="tokee-token"> with its text and label slots."""
    background, ink = layer_color(layer, num_layers)
    over, under = token_label(token, mode)
    depth = f"exit layer {layer} of {num_layers}" if layer else "no wordpieces (not run)"
    tip = " · ".join(part for part in (token.text.strip() or repr(token.text), depth, over or token.ent_type_) if part)
    classes = "tokee-token" + (" tokee-ent" if mode == "ents" and token.ent_iob_ in ("B", "I") else "")
    parts = [
        f'<span class="{classes}" data-layer="{layer}" style="background:{background};color:{ink}" '
        f'title="{html.escape(tip, quote=True)}">'
    ]
    if mode == "tags":
        parts.append(f'<span class="tokee-over">{html.escape(over)}</span>')
    parts.append(html.escape(visible_text(token)))
    if mode == "ents":
        parts.append(f'<span class="tokee-under">{html.escape(under)}</span>')
    parts.append("</span>")
    return "".join(parts)


def render_doc(doc: Doc, record: Dict, num_layers: int, mode: str) -> str:
    """One doc: its speed-up line and its tokens, in text order."""
    layers = record["exit_layers"]
    run = [layer for layer in layers if layer > 0]
    mean = sum(run) / len(run) if run else 0.0
    meta = (
        f"FLOPs speed-up <b>{speedup(record):.2f}\u00d7</b> \u00b7 mean exit layer {mean:.2f} of {num_layers} "
        f"\u00b7 {len(doc)} tokens"
    )
    tokens = []
    for token, layer in zip(doc, layers):
        tokens.append(render_token(token, layer, num_layers, mode))
        if token.is_space and "\n" in token.text:
            tokens.append("<br>")
        elif token.whitespace_:
            tokens.append(" ")
    return f'<div class="tokee-doc"><div class="tokee-meta">{meta}</div><div class="tokee-text">{"".join(tokens)}</div></div>'


def render_legend(num_layers: int) -> str:
    """The layer colours, 1 (first off-ramp) to num_layers (full depth), and the no-wordpiece box."""
    swatches = ["<span>exit layer:</span>"]
    for layer in range(1, num_layers + 1):
        background, ink = layer_color(layer, num_layers)
        name = "full depth" if layer == num_layers else f"layer {layer}"
        swatches.append(
            f'<span class="tokee-swatch" style="background:{background};color:{ink}" title="{name}">{layer}</span>'
        )
    swatches.append(f'<span class="tokee-swatch tokee-swatch-none" style="background:{NO_PIECES}">0</span>')
    swatches.append(f"<span>1 = first off-ramp (cheapest), {num_layers} = full depth, 0 = no wordpieces</span>")
    return f'<div class="tokee-legend">{"".join(swatches)}</div>'


def exit_setting(
    nlp: Any,
    component: Optional[str] = None,
    pipeline: Optional[Union[str, Path]] = None,
    config: Optional[Union[str, Path]] = None,
    config_keys: Optional[Iterable[str]] = None,
    run_overrides: Optional[Dict[str, Any]] = None,
) -> Dict[str, Any]:
    """The exit setting a picture shows, read off the loaded pipeline, for `render(setting=...)`.

    nlp (Language): the pipeline the docs went through (with any overrides applied).
    component (Optional[str]): the early-exit component shown; None = the last one.
    pipeline (Optional[Union[str, Path]]): where the pipeline was loaded from.
    config (Optional[Union[str, Path]]): a JSON of config overrides applied at
        load time (e.g. a tuned configs/2x.json), or None.
    config_keys (Optional[Iterable[str]]): the dotted keys that file set.
    run_overrides (Optional[Dict[str, Any]]): exit fields set on the pipe for
        this run only (the `visualize` command's --threshold and --window).
    RETURNS (Dict[str, Any]): plain values: "pipeline", "components" (every
        early-exit component), "component", "exit_mode", "threshold",
        "thresholds", "window", "precision", "temperatures", "num_layers",
        "config", "config_keys", "run_overrides".
    RAISES (ValueError): no such early-exit component.
    """
    from ..pipes.base import EarlyExitPipe  # here: importing it pulls in torch

    pipes = {name: pipe for name, pipe in nlp.pipeline if isinstance(pipe, EarlyExitPipe)}
    if not pipes:
        raise ValueError(f"The pipeline {nlp.pipe_names} has no early-exit component")
    component = component or list(pipes)[-1]
    if component not in pipes:
        raise ValueError(f"No early-exit component {component!r}; the pipeline has {list(pipes)}")
    pipe = pipes[component]
    return {
        "pipeline": None if pipeline is None else str(pipeline),
        "components": list(pipes),
        "component": component,
        "exit_mode": pipe.exit_mode,
        "threshold": pipe.threshold,
        "thresholds": pipe.thresholds,
        "window": pipe.window,
        "precision": pipe.precision,
        "temperatures": pipe.temperatures,
        "num_layers": pipe.encoder_depth,
        "config": None if config is None else str(config),
        "config_keys": list(config_keys or []),
        "run_overrides": dict(run_overrides or {}),
    }


def _numbers(values: Sequence[float]) -> str:
    return " \u00b7 ".join(f"{value:.3g}" for value in values)


def render_setting(setting: Dict[str, Any], speedup_all: float, n_docs: int) -> str:
    """The exit setting as one box of "key value" items (see exit_setting)."""
    items: List[Tuple[str, str]] = []
    if setting.get("pipeline"):
        items.append(("pipeline", setting["pipeline"]))
    component = str(setting.get("component", ""))
    others = [name for name in setting.get("components", []) if name != component]
    items.append(("component", component + (f" (also in the pipeline: {', '.join(others)})" if others else "")))
    mode = setting.get("exit_mode")
    if mode is not None:
        items.append(("exit_mode", str(mode) + (" (no early exit: full depth)" if mode == "off" else "")))
    if setting.get("thresholds") is not None:
        items.append(("thresholds per layer", _numbers(setting["thresholds"])))
    elif setting.get("threshold") is not None:
        items.append(("threshold", f"{setting['threshold']:.3g}"))
    if setting.get("window") is not None:
        items.append(("window", f"k = {setting['window']}"))
    if setting.get("precision") is not None:
        items.append(("precision", str(setting["precision"])))
    if "temperatures" in setting:
        temperatures = setting["temperatures"]
        items.append(("temperatures", f"calibrated ({_numbers(temperatures)})" if temperatures else "not calibrated"))
    if setting.get("config"):
        keys = setting.get("config_keys") or []
        short = sorted({key.rsplit(".", 1)[-1] for key in keys})
        items.append(("config", f"{setting['config']} applied at load time" + (f" (sets {', '.join(short)})" if short else "")))
    else:
        items.append(("config", "the pipeline's own (no --config)"))
    for field, value in (setting.get("run_overrides") or {}).items():
        note = " (per-layer thresholds cleared)" if field == "threshold" else ""
        items.append(("this run", f"{field} = {value:g}{note}" if isinstance(value, (int, float)) else f"{field} = {value}{note}"))
    docs = f"{n_docs} doc{'s' if n_docs != 1 else ''}"
    items.append(("FLOPs speed-up", f"<b>{speedup_all:.2f}\u00d7</b> over {docs}"))
    spans = []
    for key, value in items:
        value = value if key == "FLOPs speed-up" else html.escape(value)
        spans.append(f'<span><span class="tokee-setting-key">{html.escape(key)}</span> {value}</span>')
    return f'<div class="tokee-setting">{"".join(spans)}</div>'


def render(
    docs: Union[Doc, Iterable[Doc]],
    component: Optional[str] = None,
    num_layers: Optional[int] = None,
    labels: str = "auto",
    title: Optional[str] = None,
    page: bool = True,
    setting: Optional[Dict[str, Any]] = None,
) -> str:
    """HTML of processed docs, each token shaded by the layer at which it exited.

    docs (Union[Doc, Iterable[Doc]]): docs an early-exit pipeline has processed.
    component (Optional[str]): whose record to show; None = the docs' only one.
    num_layers (Optional[int]): the encoder depth, for the legend (the pipe's
        `num_layers`); None = the deepest exit layer in the docs.
    labels (str): "auto", "ents" (entity labels under their first token and a
        bar under every entity token), "tags" (tag or POS over each token) or "none".
    title (Optional[str]): a heading.
    page (bool): a whole HTML page (True) or a fragment to embed (False).
    setting (Optional[Dict[str, Any]]): the exit setting that produced the
        docs (`exit_setting(nlp, ...)`), stated under the heading with the
        FLOPs speed-up over all docs; None = not stated.
    RETURNS (str): the HTML.
    RAISES (ValueError): a doc has no early-exit record for the component.
    """
    docs = [docs] if isinstance(docs, Doc) else list(docs)
    if not docs:
        raise ValueError("render needs at least one doc")
    records: List[Dict] = []
    for index, doc in enumerate(docs):
        component, record = exit_record(doc, component, index)
        records.append(record)
    deepest = max((max(r["exit_layers"], default=0) for r in records), default=0)
    num_layers = num_layers or max(deepest, 1)
    if deepest > num_layers:
        raise ValueError(f"A token exited at layer {deepest}, deeper than num_layers={num_layers}")
    mode = label_mode(docs, labels)
    flops = sum(r["flops"] for r in records)
    full = sum(r["full_flops"] for r in records)
    summary = f"{html.escape(str(component))}: {len(docs)} doc{'s' if len(docs) > 1 else ''}"
    if len(docs) > 1:
        summary += f", FLOPs speed-up over all of them {full / flops if flops else 1.0:.2f}\u00d7"
    heading = f"<h1>{html.escape(title)}</h1>" if title else ""
    body = "".join(render_doc(doc, record, num_layers, mode) for doc, record in zip(docs, records))
    stated = render_setting(setting, full / flops if flops else 1.0, len(docs)) if setting is not None else ""
    if stated:  # the setting box names the component and the overall speed-up
        summary = ""
    fragment = (
        f'<div class="tokee">{heading}{stated}'
        + (f'<div class="tokee-summary">{summary}</div>' if summary else "")
        + f"{render_legend(num_layers)}{body}</div>"
    )
    if not page:
        return f"<style>{CSS}</style>{fragment}"
    page_title = html.escape(title or "Early exits")
    return (
        f'<!DOCTYPE html>\n<html lang="{html.escape(docs[0].lang_ or "en")}">\n<head>\n<meta charset="utf-8">\n'
        f"<title>{page_title}</title>\n<style>{CSS}</style>\n</head>\n<body>\n{fragment}\n</body>\n</html>\n"
    )


def find_browser() -> Optional[str]:
    """The path of a Chromium-family browser on PATH, or None."""
    for name in BROWSERS:
        found = shutil.which(name)
        if found:
            return found
    return None


def screenshot(
    html_path: Union[str, Path],
    png_path: Union[str, Path],
    width: int = 1000,
    height: int = 700,
    browser: Optional[str] = None,
    timeout: float = 120.0,
) -> Path:
    """Save a PNG of an HTML file as headless Chromium draws it.

    html_path (Union[str, Path]): the page.
    png_path (Union[str, Path]): the PNG to write.
    width (int): the window width in CSS pixels.
    height (int): the window height; the page below it is cut off.
    browser (Optional[str]): the browser executable; None = find_browser().
    timeout (float): seconds before the browser is given up on.
    RETURNS (Path): png_path.
    RAISES (RuntimeError): no browser, or it wrote no PNG.
    """
    browser = browser or find_browser()
    if browser is None:
        raise RuntimeError(f"No Chromium found on PATH (tried {', '.join(BROWSERS)}); install Debian's `chromium`")
    png_path = Path(png_path).resolve()
    png_path.parent.mkdir(parents=True, exist_ok=True)
    if png_path.exists():
        png_path.unlink()
    with tempfile.TemporaryDirectory(prefix="tokee-chromium-") as profile:
        # A throwaway profile: no first-run work, no lock shared with a running browser.
        command = [
            browser, "--headless", "--disable-gpu", "--hide-scrollbars", "--no-first-run",
            "--disable-dev-shm-usage", f"--user-data-dir={profile}",
            f"--window-size={width},{height}", f"--screenshot={png_path}", Path(html_path).resolve().as_uri(),
        ]
        if hasattr(os, "geteuid") and os.geteuid() == 0:
            command.insert(1, "--no-sandbox")  # Chromium refuses to run as root with its sandbox
        result = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    if not png_path.is_file() or png_path.stat().st_size == 0:
        raise RuntimeError(f"{browser} wrote no screenshot (exit {result.returncode}): {result.stderr.strip()[-500:]}")
    return png_path


__all__ = ["contrast_ratio", "exit_setting", "find_browser", "layer_color", "relative_luminance", "render", "screenshot"]
