"""The `hf-full` reference row: the trained weights run as a plain transformers
model, outside spaCy, at full depth with the last off-ramp.

This is what a user would write today around the same weights: the fast
tokenizer on a batch of pre-split words, one padded forward pass of the
backbone, the last layer's linear off-ramp, argmax, and each word's label
read at its first wordpiece. No early exit, no spaCy Doc, no windowing
(rows longer than the position limit are truncated, so the score can only
be lower than the pipeline's on such data; the benchmark corpora have none).
"""
from typing import List, Optional, Sequence

import torch
from spacy.language import Language
from spacy.tokens import Doc
from transformers import BatchEncoding

from spacy_early_exit.layers.architecture import get_shim
from spacy_early_exit.encoder.backbone import backbone_spec
from spacy_early_exit.tools.evaluate import early_exit_pipes


class HFFullDepth:
    """Full-depth token classification with the pipeline's own weights.

    nlp (Language): a trained pipeline with one early-exit component.
    """

    # What `encode` hands the forward pass: torch tensors here.
    tensor_type = "pt"

    def __init__(self, nlp: Language) -> None:
        self.name, self.pipe = early_exit_pipes(nlp)[0]
        shim = get_shim(self.pipe.model)
        self.encoder = shim.encoder
        # A loaded pipeline's modules start in train mode (Thinc's default;
        # the component switches to eval on its first prediction): dropout
        # must be off here too.
        self.encoder.eval()
        self.tokenizer = shim.tokenizer
        self.max_length = backbone_spec(self.encoder.backbone, self.tokenizer).max_positions
        self.classes = self.pipe.class_names

    def encode(self, words: Sequence[Sequence[str]]) -> BatchEncoding:
        """The fast tokenizer on pre-split words, padded to the longest row and
        truncated at the position limit, as `tensor_type` arrays.

        words (Sequence[Sequence[str]]): one list of words per row.
        RETURNS (BatchEncoding): the model inputs, with `word_ids` per row.
        """
        return self.tokenizer(
            [list(w) for w in words],
            is_split_into_words=True,
            padding=True,
            truncation=True,
            max_length=self.max_length,
            return_tensors=self.tensor_type,
        )

    @torch.inference_mode()
    def best_ids(self, encoding: BatchEncoding) -> List[List[int]]:
        """The forward pass: per row and wordpiece, the argmax class id of the
        last off-ramp. Subclasses run the same weights elsewhere (an ONNX
        Runtime session in outside_rows.py) and keep `encode` and the decoding.

        encoding (BatchEncoding): what `encode` returned.
        RETURNS (List[List[int]]): one id per padded wordpiece, per row.
        """
        hidden = self.encoder.backbone(**encoding).last_hidden_state
        return self.encoder.ramps[-1](hidden).argmax(-1).tolist()

    def label_ids(self, words: Sequence[Sequence[str]]) -> List[List[Optional[int]]]:
        """Per word, the argmax class id of the last off-ramp.

        words (Sequence[Sequence[str]]): one list of words per row.
        RETURNS (List[List[Optional[int]]]): one id per word (None: the word
            was truncated away), read at its first wordpiece.
        """
        encoding = self.encode(words)
        best = self.best_ids(encoding)
        results = []
        for row, doc_words in enumerate(words):
            first = {}
            for col, word in enumerate(encoding.word_ids(row)):
                if word is not None and word not in first:
                    first[word] = best[row][col]
            results.append([first.get(i) for i in range(len(doc_words))])
        return results

    def run(self, words: Sequence[Sequence[str]], batch_size: int) -> int:
        """Label every row in batches of `batch_size`, in the order given (as a
        DataLoader would): what the timing measures.

        words (Sequence[Sequence[str]]): one list of words per row.
        batch_size (int): rows per forward pass.
        RETURNS (int): the number of words labelled.
        """
        n = 0
        for start in range(0, len(words), batch_size):
            for labels in self.label_ids(words[start : start + batch_size]):
                n += len(labels)
        return n

    def annotate(self, docs: Sequence[Doc], batch_size: int = 64) -> List[Doc]:
        """Write the labels onto copies of `docs` with the component's own
        decoding, so spaCy's scorer can score the reference row.

        docs (Sequence[Doc]): the docs to label (left unchanged).
        batch_size (int): rows per forward pass.
        RETURNS (List[Doc]): the labelled copies, in order.
        """
        out = []
        for start in range(0, len(docs), batch_size):
            batch = [doc.copy() for doc in docs[start : start + batch_size]]
            ids = self.label_ids([[t.text for t in doc] for doc in batch])
            for doc, row in zip(batch, ids):
                self.pipe.annotate(doc, [self.classes[i] if i is not None else None for i in row])
                out.append(doc)
        return out
