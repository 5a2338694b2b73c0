"""Convert the public corpora in shared/data/, or a user's own files, into spaCy DocBin (.spacy) files.

Usage: python project/scripts/convert.py FORMAT INPUT_PATH OUTPUT_PATH [--lang LANG]

Every format also has an importable reader (``read_<format>(path, lang)``) that returns
one spaCy ``Doc`` per sentence (or per JSON line for CLUENER and JSONL). Malformed input raises a
``BadLine`` (a ``ValueError``) whose message is ``file:line: what was expected``; with a
``BadLines(skip=True)`` passed as ``bad_lines``, lines that cannot be read are skipped and
counted instead. The command line prints such an error as one line and exits with status 2.

CoNLL-column files (conll, conll_tag, conll2003) split on tabs when the file has tabs, so
a token may be any text without a tab (a non-breaking space, "New York"); files without
tabs split on any whitespace.
"""
import json
import re
import warnings
from collections import Counter
from enum import Enum
from functools import lru_cache
from pathlib import Path
from typing import Callable, Dict, Iterator, List, Optional, Sequence, Tuple, Union

import spacy
import typer
from spacy.tokens import Doc, DocBin, Span
from spacy.training import biluo_tags_to_spans, iob_to_biluo
from spacy.util import filter_spans
from spacy.vocab import Vocab

PathLike = Union[str, Path]
Line = Tuple[int, List[str]]  # (1-based line number, columns)
Block = List[Line]

UD_UPOS = frozenset(
    "ADJ ADP ADV AUX CCONJ DET INTJ NOUN NUM PART PRON PROPN PUNCT SCONJ SYM VERB X".split()
)
IOB_TAG = re.compile(r"^(O|[BI]-\S+)$")
# A tag of any tag set: one or more characters, no whitespace.
ANY_TAG = re.compile(r"^\S+$")
# A revised Weibo token is a character plus its 0-based position in its jieba word
# ("科0", "20" = the digit 2 at position 0); an unreadable emoji is two U+FFFD plus position.
WEIBO_CHAR = re.compile(r"^(\uFFFD+|.)(\d{1,2})$")
CONLLU_WORD = re.compile(r"^[0-9]+$")
CONLLU_RANGE = re.compile(r"^([0-9]+)-([0-9]+)$")
CONLLU_EMPTY = re.compile(r"^[0-9]+\.[0-9]+$")
CLUENER_SPANS_KEY = "sc"


class BadLine(ValueError):
    """A line of an input file that cannot be read; str() is "file:line: message".

    path (PathLike): The input file.
    lineno (int): The 1-based line number; 0 for a problem of the whole file.
    message (str): What was expected.
    """

    def __init__(self, path: PathLike, lineno: int, message: str) -> None:
        # Line 0: the whole file is at fault, not one of its lines.
        super().__init__(f"{path}:{lineno}: {message}" if lineno else f"{path}: {message}")
        self.path, self.lineno, self.message = path, lineno, message
        # Set by BadLines.report: a line --skip-bad-lines would have skipped.
        self.skippable = False


def fail(path: PathLike, lineno: int, message: str) -> BadLine:
    """Build the error raised for malformed input.

    path (PathLike): The input file.
    lineno (int): The 1-based line number.
    message (str): What is wrong with the line.
    RETURNS (BadLine): The error, naming the file and line.
    """
    return BadLine(path, lineno, message)


class BadLines:
    """What the readers do with a line they cannot read: raise it, or skip it and count it.

    Only single lines are skipped (a wrong column count, an empty token or tag, a bad IOB
    tag, invalid UTF-8, a JSON line that is no object); errors about a whole sentence
    (CoNLL-U IDs, IOB2 order) still raise, since dropping a line would not mend them.

    skip (bool): Skip and count instead of raising.
    """

    def __init__(self, skip: bool = False) -> None:
        self.skip = skip
        self.counts: Counter = Counter()

    def report(self, error: BadLine) -> None:
        """Raise `error`, or count its line as skipped.

        error (BadLine): The unreadable line.
        """
        if not self.skip:
            error.skippable = True
            raise error
        self.counts[str(error.path)] += 1

    def summary(self) -> List[str]:
        """One line per file with skipped lines, e.g. "x.conll: skipped 3 bad lines".

        RETURNS (List[str]): The lines, in file order.
        """
        return [f"{path}: skipped {n} bad line{'s' if n != 1 else ''}" for path, n in self.counts.items()]


def raising(bad_lines: Optional[BadLines]) -> BadLines:
    """The collector a reader uses: the given one, or one that raises on the first bad line."""
    return bad_lines if bad_lines is not None else BadLines()


@lru_cache(maxsize=None)
def get_vocab(lang: str) -> Vocab:
    """Return a (cached) blank vocab for a language.

    lang (str): A spaCy language code such as "en" or "zh".
    RETURNS (Vocab): The vocab of spacy.blank(lang).
    """
    return spacy.blank(lang).vocab


def iter_lines(path: PathLike, bad_lines: Optional[BadLines] = None) -> Iterator[Tuple[int, str]]:
    """Yield the lines of a UTF-8 file without their line ending.

    path (PathLike): The input file.
    bad_lines (Optional[BadLines]): Where a line that is not UTF-8 goes; None raises.
    YIELDS (Tuple[int, str]): The 1-based line number and the line's text.
    """
    bad_lines = raising(bad_lines)
    with Path(path).open("rb") as file_:
        for lineno, raw in enumerate(file_, start=1):
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as err:
                bad_lines.report(fail(path, lineno, f"not valid UTF-8 ({err.reason})"))
                continue
            if lineno == 1:
                text = text.lstrip("\ufeff")
            yield lineno, text.rstrip("\r\n")


def read_blocks(
    path: PathLike,
    n_columns: Sequence[int],
    sep: Optional[str] = "\t",
    comment: Optional[str] = None,
    bad_lines: Optional[BadLines] = None,
) -> Iterator[Block]:
    """Split a column file into blank-line separated blocks of (line number, columns).

    An unterminated last block (no trailing blank line) is kept.

    path (PathLike): The input file.
    n_columns (Sequence[int]): The allowed column counts of a non-blank, non-comment line.
    sep (Optional[str]): The column separator; None splits on any whitespace.
    comment (Optional[str]): Prefix of comment lines, which are dropped; None for no comments.
    bad_lines (Optional[BadLines]): Where a line with a wrong column count goes; None raises.
    YIELDS (Block): The lines of one sentence, in order.
    """
    bad_lines = raising(bad_lines)
    block: Block = []
    for lineno, text in iter_lines(path, bad_lines):
        if not text.strip():
            if block:
                yield block
            block = []
        elif comment is None or not text.startswith(comment):
            fields = text.split(sep)
            if len(fields) not in n_columns:
                expected = " or ".join(str(n) for n in n_columns)
                layout = "tab-separated " if sep == "\t" else ""
                bad_lines.report(fail(path, lineno, f"expected {expected} {layout}columns, got {len(fields)}: {text!r}"))
                continue
            block.append((lineno, fields))
    if block:
        yield block


def detect_separator(path: PathLike) -> Optional[str]:
    """The column separator of a CoNLL-column file: a tab when any line has one, else any whitespace.

    Tab-separated corpora may have tokens with spaces in them (a non-breaking space
    in tweets), which whitespace splitting would lose; space-separated ones have no tabs.

    path (PathLike): The input file.
    RETURNS (Optional[str]): "\t", or None (split on whitespace).
    """
    with Path(path).open("rb") as file_:
        return "\t" if any(b"\t" in raw for raw in file_) else None


def make_ner_doc(
    path: PathLike,
    vocab: Vocab,
    words: List[str],
    tags: List[Tuple[int, str]],
    spaces: bool,
    strict: bool,
    token_tags: Optional[List[str]] = None,
) -> Doc:
    """Create a Doc and set its entities from IOB tags (IOB2, or IOB1 unless strict).

    path (PathLike): The input file, for error messages.
    vocab (Vocab): The vocab of the new Doc.
    words (List[str]): The token texts.
    tags (List[Tuple[int, str]]): (line number, tag) per token.
    spaces (bool): Whether tokens are separated by a space (never after the last one).
    strict (bool): Raise on an I- tag that does not continue an entity of its type (IOB2).
    token_tags (Optional[List[str]]): token.tag_ per token (e.g. CoNLL-2003's PTB column), or None.
    RETURNS (Doc): The Doc with doc.ents set and all other tokens marked outside.
    """
    previous = "O"
    for lineno, tag in tags:
        if not IOB_TAG.match(tag):
            raise fail(path, lineno, f"bad IOB tag {tag!r}")
        if strict and tag.startswith("I-") and previous[2:] != tag[2:]:
            raise fail(path, lineno, f"IOB2 tag {tag!r} follows {previous!r}")
        previous = tag
    doc = Doc(vocab, words=words, spaces=[spaces] * (len(words) - 1) + [False], tags=token_tags)
    doc.ents = biluo_tags_to_spans(doc, iob_to_biluo([tag for _, tag in tags]))
    return doc


def read_iob_columns(
    path: PathLike,
    lang: str,
    columns: Tuple[int, int, int],
    sep: Optional[str] = "\t",
    comment: Optional[str] = None,
    word_of: Optional[Callable[[PathLike, int, str], str]] = None,
    spaces: bool = True,
    strict: bool = False,
    docstart: bool = False,
    bad_lines: Optional[BadLines] = None,
    token_tag_col: Optional[int] = None,
) -> List[Doc]:
    """Read a one-token-per-line NER file into Docs (shared by conll2003, iob2, weibo and conll).

    An entity may start with I- (IOB1 style) unless strict; a warning counts them.

    path (PathLike): The input file.
    lang (str): The language of the vocab.
    columns (Tuple[int, int, int]): Column count, word column index, tag column index.
    sep (Optional[str]): The column separator; None splits on whitespace.
    comment (Optional[str]): Prefix of comment lines, or None.
    word_of (Optional[Callable[[PathLike, int, str], str]]): Maps (path, line number, word
        field) to the token text; None keeps the field.
    spaces (bool): Whether tokens are separated by a space.
    strict (bool): Require IOB2 (see make_ner_doc).
    docstart (bool): Skip -DOCSTART- lines, which must each form their own block.
    bad_lines (Optional[BadLines]): Where unreadable lines (columns, empty token, bad IOB
        tag) go; None raises.
    token_tag_col (Optional[int]): A column read into token.tag_ as well (any tag set), or None.
    RETURNS (List[Doc]): One Doc per sentence.
    """
    n_columns, word_col, tag_col = columns
    bad_lines = raising(bad_lines)
    docs: List[Doc] = []
    n_i_starts = 0
    for block in read_blocks(path, [n_columns], sep=sep, comment=comment, bad_lines=bad_lines):
        block = readable_tokens(path, block, word_col, tag_col, bad_lines, IOB_TAG, "IOB tag", "O, B-TYPE or I-TYPE")
        if token_tag_col is not None:
            block = readable_tokens(path, block, word_col, token_tag_col, bad_lines, ANY_TAG, "tag", "a tag without spaces")
        starts = [lineno for lineno, fields in block if docstart and fields[0] == "-DOCSTART-"]
        if starts and len(block) > 1:
            raise fail(path, starts[0], "-DOCSTART- must be alone, between blank lines")
        if starts or not block:
            continue
        words = [fields[word_col] for _, fields in block]
        if word_of is not None:
            words = [word_of(path, lineno, word) for (lineno, _), word in zip(block, words)]
        tags = [(lineno, fields[tag_col]) for lineno, fields in block]
        token_tags = None if token_tag_col is None else [fields[token_tag_col] for _, fields in block]
        doc = make_ner_doc(path, get_vocab(lang), words, tags, spaces, strict, token_tags)
        n_i_starts += sum(tags[ent.start][1].startswith("I-") for ent in doc.ents)
        docs.append(doc)
    if n_i_starts:
        warnings.warn(f"{path}: {n_i_starts} entities start with an I- tag; read as entity starts (IOB1)")
    return docs


def readable_tokens(
    path: PathLike,
    block: Block,
    word_col: int,
    tag_col: int,
    bad_lines: BadLines,
    tag_pattern: "re.Pattern[str]",
    tag_name: str,
    expected: str,
) -> Block:
    """The lines of a block with a token and a well-formed tag; the others go to `bad_lines`.

    A tag keeps no surrounding spaces (a tab-separated "B-PER " is "B-PER"); the token is
    kept as it is, since in a tab-separated file it may be any text, spaces included.

    path (PathLike): The input file, for error messages.
    block (Block): The lines of one sentence.
    word_col (int): The token's column.
    tag_col (int): The tag's column.
    bad_lines (BadLines): Where unreadable lines go.
    tag_pattern (re.Pattern[str]): What a tag must match.
    tag_name (str): The tag, as the error names it, e.g. "IOB tag".
    expected (str): What a tag looks like, for the error, e.g. "O, B-TYPE or I-TYPE".
    RETURNS (Block): The readable lines, tags stripped.
    """
    kept: Block = []
    for lineno, fields in block:
        fields = list(fields)
        fields[tag_col] = fields[tag_col].strip()
        if not fields[word_col]:
            bad_lines.report(fail(path, lineno, f"expected a token in column {word_col + 1}, got an empty column"))
        elif not tag_pattern.match(fields[tag_col]):
            bad_lines.report(fail(path, lineno, f"bad {tag_name} {fields[tag_col]!r} in column {tag_col + 1} (expected {expected})"))
        else:
            kept.append((lineno, fields))
    return kept


def weibo_char(path: PathLike, lineno: int, field: str) -> str:
    """Strip the jieba position digits from a revised Weibo NER token.

    path (PathLike): The input file, for error messages.
    lineno (int): The line number, for error messages.
    field (str): The first column, e.g. "科0" or "20".
    RETURNS (str): The character, e.g. "科" or "2".
    """
    match = WEIBO_CHAR.match(field)
    if match is None:
        raise fail(path, lineno, f"expected a character followed by its position digits, got {field!r}")
    return match.group(1)


def read_conll2003(path: PathLike, lang: str = "en", bad_lines: Optional[BadLines] = None) -> List[Doc]:
    """Read CoNLL-2003 (word POS chunk NER, IOB1 or IOB2; -DOCSTART- lines skipped).

    path (PathLike): The input file.
    lang (str): The language of the vocab.
    bad_lines (Optional[BadLines]): Where unreadable lines go; None raises.
    RETURNS (List[Doc]): One Doc per sentence with doc.ents.
    """
    return read_iob_columns(path, lang, (4, 0, 3), sep=detect_separator(path), docstart=True, bad_lines=bad_lines)


def read_conll2003_tagged(path: PathLike, lang: str = "en", bad_lines: Optional[BadLines] = None) -> List[Doc]:
    """Read CoNLL-2003 with both of its annotations: NER (doc.ents) and the PTB POS column (token.tag_).

    The POS tags are PTB, not UPOS, so they go to token.tag_ only: a tagger trained
    on them uses attribute "tag" (tag_acc).

    path (PathLike): The input file.
    lang (str): The language of the vocab.
    bad_lines (Optional[BadLines]): Where unreadable lines go; None raises.
    RETURNS (List[Doc]): One Doc per sentence with doc.ents and token.tag_.
    """
    sep = detect_separator(path)
    return read_iob_columns(path, lang, (4, 0, 3), sep=sep, docstart=True, bad_lines=bad_lines, token_tag_col=1)


def read_iob2(path: PathLike, lang: str = "en", bad_lines: Optional[BadLines] = None) -> List[Doc]:
    """Read a UNER .iob2 file (index, word, IOB2 tag, 2 unused columns; '#' comments).

    path (PathLike): The input file.
    lang (str): The language of the vocab.
    bad_lines (Optional[BadLines]): Where unreadable lines go; None raises.
    RETURNS (List[Doc]): One Doc per sentence with doc.ents.
    """
    return read_iob_columns(path, lang, (5, 1, 2), comment="#", strict=True, bad_lines=bad_lines)


def read_weibo(path: PathLike, lang: str = "zh", bad_lines: Optional[BadLines] = None) -> List[Doc]:
    """Read revised Weibo NER (character+position, BIO tag), one token per character.

    path (PathLike): The input file.
    lang (str): The language of the vocab.
    bad_lines (Optional[BadLines]): Where unreadable lines go; None raises.
    RETURNS (List[Doc]): One Doc per message with doc.ents (labels such as PER.NAM).
    """
    return read_iob_columns(path, lang, (2, 0, 1), word_of=weibo_char, spaces=False, bad_lines=bad_lines)


def conllu_words(path: PathLike, block: Block) -> Tuple[Block, Dict[int, str]]:
    """Keep the word lines (integer IDs) of a CoNLL-U sentence, checking the IDs.

    Multiword token ranges ("3-4") and empty nodes ("5.1") are dropped.

    path (PathLike): The input file, for error messages.
    block (Block): The token lines of one sentence.
    RETURNS (Tuple[Block, Dict[int, str]]): The word lines, and for word IDs inside a
        multiword token the MISC that decides their SpaceAfter.
    """
    words: Block = []
    misc_of: Dict[int, str] = {}
    for lineno, fields in block:
        token_id, expected = fields[0], len(words) + 1
        multiword = CONLLU_RANGE.match(token_id)
        if CONLLU_WORD.match(token_id) and int(token_id) == expected:
            words.append((lineno, fields))
        elif multiword and int(multiword.group(1)) == expected < int(multiword.group(2)):
            last = int(multiword.group(2))
            misc_of.update({i: "SpaceAfter=No" for i in range(expected, last)})
            misc_of[last] = fields[-1]
        elif not CONLLU_EMPTY.match(token_id):
            raise fail(path, lineno, f"bad or out-of-order ID {token_id!r} (expected {expected})")
    if not words:
        raise fail(path, block[0][0], "sentence has no word lines")
    return words, misc_of


def read_conllu_pos(path: PathLike, lang: str = "en", bad_lines: Optional[BadLines] = None) -> List[Doc]:
    """Read CoNLL-U words with UPOS (token.pos_) and XPOS (token.tag_).

    path (PathLike): The input file.
    lang (str): The language of the vocab.
    bad_lines (Optional[BadLines]): Where lines with a wrong column count go; None raises.
    RETURNS (List[Doc]): One Doc per sentence; doc.text follows SpaceAfter=No.
    """
    docs: List[Doc] = []
    for block in read_blocks(path, [10], comment="#", bad_lines=bad_lines):
        lines, misc_of = conllu_words(path, block)
        for lineno, fields in lines:
            if fields[3] not in UD_UPOS:
                raise fail(path, lineno, f"{fields[3]!r} is not a UD UPOS tag")
        misc = [misc_of.get(i, f[9]).split("|") for i, (_, f) in enumerate(lines, start=1)]
        spaces = ["SpaceAfter=No" not in m for m in misc[:-1]] + [False]
        words = [f[1] for _, f in lines]
        pos = [f[3] for _, f in lines]
        tags = ["" if f[4] == "_" else f[4] for _, f in lines]
        docs.append(Doc(get_vocab(lang), words=words, spaces=spaces, pos=pos, tags=tags))
    return docs


SENT_ID = re.compile(r"^#\s*sent_id\s*=\s*(.*?)\s*$")
# Skipped sentences named one by one before "... and N more".
JOIN_REPORT_LIMIT = 5


def sentence_ids(path: PathLike) -> List[Optional[str]]:
    """The `# sent_id = ...` of each sentence of a CoNLL-U-like file (CoNLL-U, UNER .iob2), in order.

    A sentence is a blank-line separated block with at least one token line, as
    read_blocks yields them, so the list pairs up with the docs a reader returns.

    path (PathLike): The input file.
    RETURNS (List[Optional[str]]): One id per sentence; None for a sentence without one.
    """
    ids: List[Optional[str]] = []
    pending: Optional[str] = None
    in_sentence = False
    # The readers report unreadable lines; here they only must not stop the count.
    for _, text in iter_lines(path, BadLines(skip=True)):
        if not text.strip():
            pending, in_sentence = None, False
        elif text.startswith("#"):
            match = SENT_ID.match(text)
            pending = match.group(1) if match else pending
        elif not in_sentence:
            ids.append(pending)
            in_sentence = True
    return ids


def with_ids(path: PathLike, docs: List[Doc]) -> List[Tuple[Optional[str], Doc]]:
    """Pair each doc a reader returned for `path` with its sentence id.

    path (PathLike): The file the docs were read from.
    docs (List[Doc]): One doc per sentence.
    RETURNS (List[Tuple[Optional[str], Doc]]): (sent_id, doc) in file order.
    RAISES (BadLine): The file has a different number of sentences than docs
        (a whole sentence was skipped as unreadable), so ids cannot be paired.
    """
    ids = sentence_ids(path)
    if len(ids) != len(docs):
        raise fail(path, 0, f"{len(ids)} sentences but {len(docs)} were read: cannot pair sentences with their sent_id")
    return list(zip(ids, docs))


def join_by_sentence_id(
    ner: List[Tuple[Optional[str], Doc]], pos: List[Tuple[Optional[str], Doc]]
) -> Tuple[List[Doc], List[str]]:
    """Join NER sentences and POS sentences of the same treebank on their sent_id.

    The joined doc is the POS doc (its words, spaces, UPOS and XPOS) with the NER
    doc's entities, token for token; a sentence whose words differ between the
    two files (the annotators tokenized it differently) is skipped, since its
    entities cannot be placed on the POS tokens without guessing.

    ner (List[Tuple[Optional[str], Doc]]): (sent_id, doc with doc.ents), in the order kept.
    pos (List[Tuple[Optional[str], Doc]]): (sent_id, doc with token.pos_).
    RETURNS (Tuple[List[Doc], List[str]]): The joined docs in `ner`'s order, and one
        line per skipped sentence saying why.
    """
    by_id: Dict[str, Doc] = {}
    duplicates = set()
    for sent_id, doc in pos:
        if sent_id is not None:
            if sent_id in by_id:
                duplicates.add(sent_id)
            by_id[sent_id] = doc
    joined: List[Doc] = []
    skipped: List[str] = []
    seen = set()
    for sent_id, ner_doc in ner:
        words = [t.text for t in ner_doc]
        pos_doc = by_id.get(sent_id) if sent_id is not None else None
        if sent_id is None:
            skipped.append(f"a sentence without sent_id ({' '.join(words[:8])} ...)")
        elif sent_id in duplicates or sent_id in seen:
            skipped.append(f"{sent_id}: the sent_id is not unique")
        elif pos_doc is None:
            skipped.append(f"{sent_id}: not in the POS file")
        elif [t.text for t in pos_doc] != words:
            first = next(i for i, (a, b) in enumerate(zip(words + [""], [t.text for t in pos_doc] + [""])) if a != b)
            ner_word = words[first] if first < len(words) else "(end)"
            pos_word = pos_doc[first].text if first < len(pos_doc) else "(end)"
            skipped.append(f"{sent_id}: the tokens differ at token {first + 1} ({ner_word!r} vs {pos_word!r})")
        else:
            doc = pos_doc.copy()
            doc.ents = [Span(doc, ent.start, ent.end, label=ent.label_) for ent in ner_doc.ents]
            joined.append(doc)
        if sent_id is not None:
            seen.add(sent_id)
    matched = {sent_id for sent_id, _ in ner}
    missing = [sent_id for sent_id, _ in pos if sent_id is not None and sent_id not in matched]
    skipped.extend(f"{sent_id}: not in the NER file" for sent_id in missing)
    return joined, skipped


def read_iob2_conllu(
    ner_path: PathLike, pos_path: PathLike, lang: str = "en", bad_lines: Optional[BadLines] = None
) -> Tuple[List[Doc], List[str]]:
    """Read a UNER .iob2 file and the UD CoNLL-U file of the same sentences, joined by sent_id.

    ner_path (PathLike): The .iob2 file (entities).
    pos_path (PathLike): The .conllu file (UPOS).
    lang (str): The language of the vocab.
    bad_lines (Optional[BadLines]): Where unreadable lines go; None raises.
    RETURNS (Tuple[List[Doc], List[str]]): Docs with doc.ents and token.pos_ (and
        token.tag_, the XPOS) in the .iob2 file's order, and one line per sentence
        that did not join (see join_by_sentence_id).
    """
    ner = with_ids(ner_path, read_iob2(ner_path, lang, bad_lines=bad_lines))
    pos = with_ids(pos_path, read_conllu_pos(pos_path, lang, bad_lines=bad_lines))
    return join_by_sentence_id(ner, pos)


def join_report(skipped: List[str], limit: int = JOIN_REPORT_LIMIT) -> List[str]:
    """The lines that report sentences left out of a join: the first `limit`, then a count.

    skipped (List[str]): One line per skipped sentence.
    limit (int): How many to name.
    RETURNS (List[str]): The lines to print.
    """
    lines = [f"  skipped {line}" for line in skipped[:limit]]
    if len(skipped) > limit:
        lines.append(f"  ... and {len(skipped) - limit} more")
    return lines


def read_conllu_seg(path: PathLike, lang: str = "zh", bad_lines: Optional[BadLines] = None) -> List[Doc]:
    """Read gold word segmentation from CoNLL-U (10 columns) or UNER .iob2 (5 columns).

    The column count of the first token line fixes the layout for the whole file.

    path (PathLike): The input file.
    lang (str): The language of the vocab.
    bad_lines (Optional[BadLines]): Where lines with a wrong column count go; None raises.
    RETURNS (List[Doc]): One Doc per sentence whose tokens are the gold words, spaces False.
    """
    docs: List[Doc] = []
    width = 0
    for block in read_blocks(path, [5, 10], comment="#", bad_lines=bad_lines):
        width = width or len(block[0][1])
        for lineno, fields in block:
            if len(fields) != width:
                raise fail(path, lineno, f"expected {width} columns like the first token line, got {len(fields)}")
        words = [f[1] for _, f in conllu_words(path, block)[0]]
        docs.append(Doc(get_vocab(lang), words=words, spaces=[False] * len(words)))
    return docs


def cluener_spans(path: PathLike, lineno: int, doc: Doc, labels: object) -> List[Span]:
    """Turn a CLUENER "label" object (inclusive character offsets) into spans.

    path (PathLike): The input file, for error messages.
    lineno (int): The line number, for error messages.
    doc (Doc): The character-tokenized Doc.
    labels (object): {type: {entity text: [[start, end], ...]}} with end inclusive.
    RETURNS (List[Span]): The spans, sorted by position.
    """
    if not isinstance(labels, dict) or not all(isinstance(ents, dict) for ents in labels.values()):
        raise fail(path, lineno, "'label' must map each type to {entity: [[start, end], ...]}")
    spans: List[Span] = []
    for label, entities in labels.items():
        for entity, offsets in entities.items():
            for pair in offsets if isinstance(offsets, list) else [offsets]:
                ok = isinstance(pair, list) and len(pair) == 2 and all(type(i) is int for i in pair)
                start, end = pair if ok else (-1, -1)
                if not 0 <= start <= end or doc.text[start : end + 1] != entity:
                    raise fail(path, lineno, f"{pair!r} are not inclusive offsets of {entity!r} ({label})")
                spans.append(Span(doc, start, end + 1, label=label))
    return sorted(spans)


def read_cluener(path: PathLike, lang: str = "zh", bad_lines: Optional[BadLines] = None) -> List[Doc]:
    """Read CLUENER JSON lines into character-tokenized Docs.

    All spans go to doc.spans["sc"]; doc.ents holds the longest non-overlapping ones.
    A line without "label" (the unlabeled test set) leaves the entity annotation missing.

    path (PathLike): The input file.
    lang (str): The language of the vocab.
    bad_lines (Optional[BadLines]): Where lines that are no JSON object with a text go; None raises.
    RETURNS (List[Doc]): One Doc per non-blank line.
    """
    bad_lines = raising(bad_lines)
    docs: List[Doc] = []
    for lineno, text in iter_lines(path, bad_lines):
        if not text.strip():
            continue
        try:
            record = json.loads(text)
            chars = list(record["text"])
        except (ValueError, KeyError, TypeError) as err:
            bad_lines.report(fail(path, lineno, f"expected a JSON object with a 'text' string ({err})"))
            continue
        doc = Doc(get_vocab(lang), words=chars, spaces=[False] * len(chars))
        if "label" in record:
            spans = cluener_spans(path, lineno, doc, record["label"])
            doc.spans[CLUENER_SPANS_KEY] = spans
            doc.ents = filter_spans(spans)
        docs.append(doc)
    n_dropped = sum(len(d.spans.get(CLUENER_SPANS_KEY, [])) - len(d.ents) for d in docs)
    if n_dropped:
        warnings.warn(f"{path}: {n_dropped} overlapping spans kept in doc.spans only, not in doc.ents")
    return docs


def column_count(path: PathLike, sep: Optional[str] = None) -> Tuple[int, int]:
    """The number of columns of the first token line (the width of the whole file), and its line number.

    path (PathLike): The input file.
    sep (Optional[str]): The column separator; None splits on whitespace.
    RETURNS (Tuple[int, int]): The column count and line number, or (0, 0) for a file with no token lines.
    """
    for lineno, text in iter_lines(path, BadLines(skip=True)):  # the readers report bad lines
        if text.strip():
            return len(text.split(sep)), lineno
    return 0, 0


def conll_layout(path: PathLike, what: str) -> Tuple[int, Optional[str]]:
    """The column count and separator of a CoNLL-column file whose first column is the token and last the tag.

    path (PathLike): The input file.
    what (str): The tag, as an error names it (e.g. "IOB tag").
    RETURNS (Tuple[int, Optional[str]]): The width (0 for an empty file) and the separator (see detect_separator).
    RAISES (BadLine): The first token line has one column: the layout is unknown, so no line can be skipped.
    """
    sep = detect_separator(path)
    width, lineno = column_count(path, sep)
    if width == 1:
        layout = "tab-separated " if sep else ""
        raise fail(path, lineno, f"expected at least 2 {layout}columns (token ... {what}), got 1")
    return width, sep


def read_conll(path: PathLike, lang: str = "en", bad_lines: Optional[BadLines] = None) -> List[Doc]:
    """Read any CoNLL-style NER file: columns, the word first and the IOB tag last.

    Every token line must have as many columns as the first one (2 for "word tag",
    4 for CoNLL-2003 ...). IOB1 or IOB2; -DOCSTART- lines are skipped. Columns are
    tab-separated when the file has tabs (a token may then hold spaces), else
    whitespace-separated.

    path (PathLike): The input file.
    lang (str): The language of the vocab.
    bad_lines (Optional[BadLines]): Where unreadable lines go; None raises.
    RETURNS (List[Doc]): One Doc per sentence with doc.ents.
    """
    width, sep = conll_layout(path, "IOB tag")
    return read_iob_columns(path, lang, (width, 0, width - 1), sep=sep, docstart=True, bad_lines=bad_lines) if width else []


def read_conll_tag(path: PathLike, lang: str = "en", bad_lines: Optional[BadLines] = None) -> List[Doc]:
    """Read a CoNLL-style tagging file: the word first and its tag last, any tag set.

    The tags go to token.tag_ (PTB, ARK Twitter, your own); a tag set within UD UPOS
    goes to token.pos_ as well, so it trains and scores like a CoNLL-U corpus.
    Columns as in read_conll; -DOCSTART- lines are skipped.

    path (PathLike): The input file.
    lang (str): The language of the vocab.
    bad_lines (Optional[BadLines]): Where unreadable lines (columns, empty token or tag) go; None raises.
    RETURNS (List[Doc]): One Doc per sentence with token.tag_ (and token.pos_ for UPOS).
    """
    width, sep = conll_layout(path, "tag")
    if not width:
        return []
    bad_lines = raising(bad_lines)
    sentences: List[Tuple[List[str], List[str]]] = []
    for block in read_blocks(path, [width], sep=sep, bad_lines=bad_lines):
        block = readable_tokens(path, block, 0, width - 1, bad_lines, ANY_TAG, "tag", "a tag without spaces")
        if block and block[0][1][0] == "-DOCSTART-":
            if len(block) > 1:
                raise fail(path, block[0][0], "-DOCSTART- must be alone, between blank lines")
            continue
        if block:
            sentences.append(([f[0] for _, f in block], [f[-1] for _, f in block]))
    upos = all(tag in UD_UPOS for _, tags in sentences for tag in tags)
    vocab = get_vocab(lang)
    return [Doc(vocab, words=words, tags=tags, pos=tags if upos else None) for words, tags in sentences]


def jsonl_span(path: PathLike, lineno: int, item: object) -> Tuple[int, int, str]:
    """One span of a JSONL record: [start, end, label] or {"start", "end", "label"}.

    path (PathLike): The input file, for error messages.
    lineno (int): The line number, for error messages.
    item (object): The parsed span.
    RETURNS (Tuple[int, int, str]): Character offsets (end exclusive) and label.
    """
    if isinstance(item, dict):
        item = [item.get("start"), item.get("end"), item.get("label")]
    ok = isinstance(item, list) and len(item) == 3
    start, end, label = item if ok else (None, None, None)
    if not (type(start) is int and type(end) is int and isinstance(label, str) and label):
        raise fail(path, lineno, f"a span must be [start, end, label] or {{'start', 'end', 'label'}}; got {item!r}")
    return start, end, label


def read_jsonl(path: PathLike, lang: str = "en", bad_lines: Optional[BadLines] = None) -> List[Doc]:
    """Read JSON lines {"text": ..., "spans" or "entities": [[start, end, label], ...]}.

    Offsets are characters with the end exclusive (spaCy's and Prodigy's
    convention); a span may also be {"start", "end", "label"}. The text is
    tokenized by spacy.blank(lang), one token per character for Chinese (the
    project's Chinese pipelines tokenize characters). A span whose edges fall
    inside a token is widened to whole tokens, and a warning counts them.
    All spans go to doc.spans["sc"]; doc.ents holds the longest non-overlapping ones.

    path (PathLike): The input file.
    lang (str): The language of the tokenizer and vocab.
    bad_lines (Optional[BadLines]): Where lines that are no JSON object with a text go; None raises.
    RETURNS (List[Doc]): One Doc per non-blank line.
    """
    bad_lines = raising(bad_lines)
    nlp = spacy.blank(lang)
    docs: List[Doc] = []
    n_widened = 0
    for lineno, text in iter_lines(path, bad_lines):
        if not text.strip():
            continue
        try:
            record = json.loads(text)
            body = record["text"]
            if not isinstance(body, str):
                raise TypeError("'text' is not a string")
        except (ValueError, KeyError, TypeError) as err:
            bad_lines.report(fail(path, lineno, f"expected a JSON object with a 'text' string ({err})"))
            continue
        if lang == "zh":
            doc = Doc(nlp.vocab, words=list(body), spaces=[False] * len(body))
        else:
            doc = nlp.make_doc(body)
        items = record.get("spans", record.get("entities", []))
        if not isinstance(items, list):
            raise fail(path, lineno, "'spans' (or 'entities') must be a list")
        spans: List[Span] = []
        for item in items:
            start, end, label = jsonl_span(path, lineno, item)
            if not 0 <= start < end <= len(body):
                raise fail(path, lineno, f"span [{start}, {end}] is outside the text (length {len(body)})")
            span = doc.char_span(start, end, label=label)
            if span is None:
                span = doc.char_span(start, end, label=label, alignment_mode="expand")
                n_widened += 1
            if span is None or not len(span):
                raise fail(path, lineno, f"span [{start}, {end}] {body[start:end]!r} covers no token")
            spans.append(span)
        doc.spans[CLUENER_SPANS_KEY] = sorted(spans)
        doc.ents = filter_spans(spans)
        docs.append(doc)
    if n_widened:
        warnings.warn(f"{path}: {n_widened} spans did not match token boundaries and were widened to whole tokens")
    n_dropped = sum(len(d.spans.get(CLUENER_SPANS_KEY, [])) - len(d.ents) for d in docs)
    if n_dropped:
        warnings.warn(f"{path}: {n_dropped} overlapping spans kept in doc.spans only, not in doc.ents")
    return docs


class Format(str, Enum):
    conll2003 = "conll2003"
    conll2003_tagged = "conll2003_tagged"
    iob2 = "iob2"
    conllu_pos = "conllu_pos"
    conllu_seg = "conllu_seg"
    weibo = "weibo"
    cluener = "cluener"
    conll = "conll"
    conll_tag = "conll_tag"
    jsonl = "jsonl"


# Each reader is reader(path, lang, bad_lines=None).
READERS: Dict[str, Tuple[Callable[..., List[Doc]], str]] = {
    "conll2003": (read_conll2003, "en"),
    "conll2003_tagged": (read_conll2003_tagged, "en"),
    "iob2": (read_iob2, "en"),
    "conllu_pos": (read_conllu_pos, "en"),
    "conllu_seg": (read_conllu_seg, "zh"),
    "weibo": (read_weibo, "zh"),
    "cluener": (read_cluener, "zh"),
    "conll": (read_conll, "en"),
    "conll_tag": (read_conll_tag, "en"),
    "jsonl": (read_jsonl, "en"),
}


def summarize(docs: List[Doc]) -> Dict[str, Counter]:
    """Count docs, tokens, characters and labels (entities, spans, UPOS, tags).

    docs (List[Doc]): The converted docs.
    RETURNS (Dict[str, Counter]): "totals" plus one Counter per label kind found.
    """
    totals = Counter(docs=len(docs), tokens=sum(len(d) for d in docs), chars=sum(len(d.text) for d in docs))
    stats = {
        "totals": totals,
        "entities": Counter(ent.label_ for d in docs for ent in d.ents),
        "spans": Counter(s.label_ for d in docs for s in d.spans.get(CLUENER_SPANS_KEY, [])),
        "upos": Counter(t.pos_ for d in docs for t in d if t.pos_),
        "tags": Counter(t.tag_ for d in docs for t in d if t.tag_),
    }
    return {key: counts for key, counts in stats.items() if counts}


def read_or_exit(
    reader: Callable[..., List[Doc]], path: PathLike, lang: str, bad_lines: BadLines, skip_option: str = "--skip-bad-lines"
) -> List[Doc]:
    """Run a reader; on a line it cannot read, print "file:line: what was expected" and exit 2.

    A traceback would bury the one line that matters (which file, which line).

    reader (Callable[..., List[Doc]]): A READERS function.
    path (PathLike): The input file.
    lang (str): The language of the vocab.
    bad_lines (BadLines): Skip and count, or raise.
    skip_option (str): How the caller's user asks to skip such lines, for the hint.
    RETURNS (List[Doc]): The docs.
    """
    try:
        return reader(path, lang, bad_lines=bad_lines)
    except BadLine as err:
        hint = f" (skip such lines with {skip_option})" if err.skippable else ""
        typer.echo(f"{err}{hint}", err=True)
        raise typer.Exit(2) from None


app = typer.Typer(add_completion=False)


@app.command()
def main(
    fmt: Format = typer.Argument(..., metavar="FORMAT", help="Input format"),
    input_path: Path = typer.Argument(..., metavar="INPUT_PATH", exists=True, dir_okay=False, help="Corpus file"),
    output_path: Path = typer.Argument(..., metavar="OUTPUT_PATH", dir_okay=False, help="Output .spacy file"),
    lang: Optional[str] = typer.Option(None, help="Language code (default: en, or zh for Chinese formats)"),
    skip_bad_lines: bool = typer.Option(False, "--skip-bad-lines", help="Skip lines that cannot be read (and count them) instead of stopping at the first"),
) -> None:
    """Convert INPUT_PATH in FORMAT to a DocBin at OUTPUT_PATH and print counts."""
    reader, default_lang = READERS[fmt.value]
    bad_lines = BadLines(skip=skip_bad_lines)
    docs = read_or_exit(reader, input_path, lang or default_lang, bad_lines)
    for line in bad_lines.summary():
        typer.echo(line)
    output_path.parent.mkdir(parents=True, exist_ok=True)
    DocBin(docs=docs, store_user_data=False).to_disk(output_path)
    for kind, counts in summarize(docs).items():
        items = counts.items() if kind == "totals" else counts.most_common()
        total = "" if kind == "totals" else f" (total {sum(counts.values())})"
        typer.echo(f"{kind}{total}: " + ", ".join(f"{key} {n}" for key, n in items))
    typer.echo(f"Saved {len(docs)} docs to {output_path}")


if __name__ == "__main__":
    app()
