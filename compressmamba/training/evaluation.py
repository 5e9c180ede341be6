"""Evaluation during training: mean loss with perplexity and bits per byte (language models) or
accuracy (classifiers, recall tasks), summed across ranks; the best validation point and the test
score there. The Trainer inherits these."""

from __future__ import annotations

import functools
import math
import time

import torch

from ..models.protocol import IGNORE_INDEX, next_token_pairs
from .answers import answer_counts
from .data import shard_batches
from .metrics import target_bytes
from .sharded import is_fsdp2


class Evaluation:
    """Evaluation of the Trainer's model (see ``trainer.Trainer``)."""

    @torch.no_grad()
    def evaluate(self, split: str, *, whole: bool = False) -> dict:
        """Mean loss (and perplexity or accuracy) on ``split``: its first ``train.eval_batches``
        batches, or all of it with ``whole``."""
        ds = getattr(self.data, split)
        acc, t = self.accelerator, self.recipe.train
        model = self.model
        was = model.training
        model.eval()
        tot = torch.zeros(4, dtype=torch.float64, device=acc.device)  # loss sum, correct, count, bytes
        zero = torch.zeros((), device=acc.device, dtype=torch.float64)
        bs = t.eval_batch_size or t.batch_size
        for batch, real in self._eval_batches(ds, bs, None if whole else t.eval_batches):
            batch = {k: v.to(acc.device) for k, v in batch.items()}
            with acc.autocast():
                out = model(**batch)
            if not real:
                continue
            if self.task == "lm":
                _, targets = next_token_pairs(out.logits, batch["labels"])
                n = (targets != IGNORE_INDEX).sum()
                nbytes = target_bytes(targets, self._token_bytes) if self._token_bytes is not None else zero
                correct = answer_counts(out.logits, batch["labels"])[0].double() if self.answer_accuracy else zero
                tot += torch.stack([out.loss.double() * n, correct, n.double(), nbytes])
            else:
                y = batch["labels"]
                correct = (out.logits.argmax(-1) == y).sum()
                tot += torch.stack(
                    [
                        out.loss.double() * len(y),
                        correct.double(),
                        torch.tensor(float(len(y)), device=acc.device, dtype=torch.float64),
                        zero,
                    ]
                )
        model.train(was)
        tot = acc.reduce(tot, reduction="sum")
        loss = (tot[0] / tot[2].clamp_min(1)).item()
        res = {"loss": loss}
        if self.task == "lm":
            res["perplexity"] = math.exp(min(loss, 50))
            if tot[3] > 0:  # the loss in bits over the bytes the targets decode to
                res["bits_per_byte"] = (tot[0] / tot[3]).item() / math.log(2)
        if self.task != "lm" or self.answer_accuracy:
            res["accuracy"] = (tot[1] / tot[2].clamp_min(1)).item()
        return res

    def _eval_batches(self, ds, bs: int, limit: int | None):
        """(batch, real) of this rank's evaluation batches. Under FSDP2 a forward is collective,
        so a rank with fewer batches than rank 0 runs its first batch again (real False: not
        counted) until every rank has run as many forwards."""
        acc = self.accelerator
        n = 0
        for batch in shard_batches(ds, bs, acc.process_index, acc.num_processes, limit):
            n += 1
            yield batch, True
        if not is_fsdp2(self) or n == 0:
            return
        most = -(-len(range(0, len(ds), acc.num_processes)) // bs)
        most = min(most, limit) if limit is not None else most
        first = next(shard_batches(ds, bs, acc.process_index, acc.num_processes, 1))
        for _ in range(most - n):
            yield first, False

    @functools.cached_property
    def _token_bytes(self) -> torch.Tensor | None:
        """Bytes per token id (the tokenizer's ``token_bytes``), or None where the data has no tokenizer."""
        tok = self.data.info.get("tokenizer")
        table = getattr(tok, "token_bytes", None)
        return None if table is None else torch.as_tensor(table(), dtype=torch.float64, device=self.accelerator.device)

    def val_score(self, res: dict) -> float:
        """Higher is better: accuracy for classification, minus the loss for language models."""
        return res["accuracy"] if "accuracy" in res else -res["loss"]

    def evaluate_and_track(self, after_cut: bool = False) -> dict:
        val = self.evaluate("val")
        self.log_row(
            step=self.step, kind="eval", split="val", state_sizes=self.model.state_sizes, wall_time=time.time(), **val
        )
        best = self.state.best_val
        if after_cut or best is None or self.val_score(val) > best:
            self.state.best_val = self.val_score(val)
            self.state.val_at_best = val
            if self.data.test is not None:
                test = self.evaluate("test")
                self.state.test_at_best = test
                self.log_row(
                    step=self.step,
                    kind="eval",
                    split="test",
                    state_sizes=self.model.state_sizes,
                    wall_time=time.time(),
                    **test,
                )
        return val
