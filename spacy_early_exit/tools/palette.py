"""The colours of the exit picture: one per exit layer, readable text on each.

Colour arithmetic only (WCAG 2.x contrast, OKLab/OKLCh), no spaCy: the
picture (`visualize.py`) asks `layer_color` for a token's background and ink.
"""
import functools
import math
from typing import Tuple

NO_PIECES = "#e9e9e9"  # tokens with no wordpieces (exit layer 0)

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
