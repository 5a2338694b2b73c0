"""A picture of the exits: HTML with each token shaded by the layer it left at.

`render(doc)` reads `doc._.early_exit[component]` (the record every early-exit
pipe writes) and returns one self-contained page, no script and no external
file, in the spirit of displaCy: the text as it reads, each token a box whose
colour is its exit layer, the entities (or tags) beside the tokens, a legend
of the layers, each doc's FLOPs speed-up and, given `setting=exit_setting(nlp)`,
the exit setting that produced it. `screenshot` saves a PNG of such
a page with a headless Chromium, for READMEs and tests.
"""
import html
import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple, Union

from spacy.tokens import Doc, Token

from ..pipes.record import EXTENSION
from .palette import NO_PIECES, layer_color
from .setting_box import exit_setting, render_setting

LABEL_MODES = ("auto", "ents", "tags", "none")
BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")

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


__all__ = ["exit_setting", "find_browser", "layer_color", "render", "screenshot"]
