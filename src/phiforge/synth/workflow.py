"""Running a dataset type's steps over a batch of samples.

Every step sends one batched request per call to the backend (all live samples at once), so an
in-process teacher generates in batches and an endpoint sees concurrent requests. Each sample keeps a
trace of the steps that touched it (the provenance a user inspects with `phiforge synth inspect`).
"""

from __future__ import annotations

import difflib
import re
from dataclasses import replace
from datetime import datetime, timezone

from phiforge.errors import UserError
from phiforge.generation.base import Backend, Messages, Sampling
from phiforge.synth import dataset as ds
from phiforge.synth.verify import final_number, verify
from phiforge.synth.verify import plurality as plurality_vote

Sample = dict  # fields; "_trace" (step records) and "_dropped" (reason) are bookkeeping


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _live(samples: list[Sample]) -> list[Sample]:
    return [s for s in samples if "_dropped" not in s]


class Workflow:
    def __init__(self, dtype: ds.DatasetType, backend: Backend | None, sampling: Sampling) -> None:
        self.dtype, self.backend, self.sampling = dtype, backend, sampling

    # -- helpers ---------------------------------------------------------------------------------
    def _sampling(self, override: ds.SamplingOverride) -> Sampling:
        changes = {k: v for k, v in override.model_dump().items() if v is not None}
        if "max_tokens" in changes:  # the recipe's teacher.max_tokens caps every step: it bounds the teacher's cost
            changes["max_tokens"] = min(changes["max_tokens"], self.sampling.max_tokens)
        return replace(self.sampling, **changes)

    def _ask(self, conversations: list[Messages], sampling: Sampling, n: int = 1) -> list[list[str]]:
        if self.backend is None:
            raise UserError(f"dataset type '{self.dtype.name}' has teacher steps but the recipe has no `teacher` section")
        return self.backend.chat(conversations, sampling, n)

    def _render(self, template: str, sample: Sample, where: str) -> str:
        return ds.render(template, sample, self.dtype.name, where)

    def _record(self, sample: Sample, index: int, step: ds.Spec, sampling: Sampling | None, **extra) -> None:
        entry = {"step": index, "kind": step.kind, "at": _now(), **extra}
        if sampling is not None:
            entry |= {"teacher": self.backend.model, "sampling": sampling.as_dict()}
        sample.setdefault("_trace", []).append(entry)

    # -- steps -----------------------------------------------------------------------------------
    def generate(self, i: int, step: ds.Generate, samples: list[Sample]) -> None:
        sampling = self._sampling(step.sampling)
        convs = []
        for s in samples:
            system = [{"role": "system", "content": self._render(step.system, s, f"step {i} system")}] if step.system else []
            convs.append(system + [{"role": "user", "content": self._render(step.prompt, s, f"step {i} prompt")}])
        for s, (reply,) in zip(samples, self._ask(convs, sampling)):
            s[step.output] = reply
            self._record(s, i, step, sampling, output=step.output)

    def parse(self, i: int, step: ds.Parse, samples: list[Sample]) -> None:
        pattern = re.compile(step.pattern, re.DOTALL)
        for s in samples:
            if step.input not in s:
                raise UserError(f"dataset type '{self.dtype.name}', step {i}: parse input field {step.input!r} does not exist")
            m = pattern.search(s[step.input])
            if m is None or not all(v and v.strip() for v in m.groupdict().values()):
                s["_dropped"] = f"step {i} parse: reply did not match"
                continue
            s.update({k: v.strip() for k, v in m.groupdict().items()})
            self._record(s, i, step, None, fields=sorted(m.groupdict()))

    def dialogue(self, i: int, step: ds.Dialogue, samples: list[Sample]) -> None:
        sampling = self._sampling(step.sampling)
        transcripts = [[("user", self._render(step.opening, s, f"step {i} opening"))] for s in samples]
        for turn in range(step.turns):
            role = step.roles[turn % len(step.roles)]
            convs = []
            for s, t in zip(samples, transcripts):
                # The speaking role sees its own lines as "assistant" and everyone else's as "user".
                msgs = [{"role": "system", "content": self._render(role.system, s, f"step {i} role {role.name}")}]
                msgs += [{"role": "assistant" if who == role.name else "user", "content": text} for who, text in t]
                convs.append(msgs)
            for t, (reply,) in zip(transcripts, self._ask(convs, sampling)):
                t.append((role.name, reply))
        for s, t in zip(samples, transcripts):
            s[step.output] = "\n\n".join(f"{who.capitalize()}: {text}" for who, text in t[1:])
            self._record(s, i, step, sampling, output=step.output, turns=[{"role": w, "text": x} for w, x in t])

    def revise(self, i: int, step: ds.Revise, samples: list[Sample]) -> None:
        sampling = self._sampling(step.sampling)
        drafts = [s[step.input] for s in samples]
        history: list[list[dict]] = [[] for _ in samples]
        for _ in range(step.rounds):
            ctx = [{"draft": d, "rubric": step.rubric} for d in drafts]
            critiques = self._ask([[{"role": "user", "content": self._render(step.critique, c, f"step {i} critique")}] for c in ctx], sampling)
            ctx = [{"draft": d, "critique": c} for d, (c,) in zip(drafts, critiques)]
            revised = self._ask([[{"role": "user", "content": self._render(step.revise, c, f"step {i} revise")}] for c in ctx], sampling)
            for h, d, (c,), (r,) in zip(history, drafts, critiques, revised):
                h.append({"draft": d, "critique": c, "revision": r})
            drafts = [r for (r,) in revised]
        for s, d, h in zip(samples, drafts, history):
            s[step.output] = d
            self._record(s, i, step, sampling, output=step.output, rounds=h)

    def reverse(self, i: int, step: ds.Reverse, samples: list[Sample]) -> None:
        sampling = self._sampling(step.sampling)
        artifacts = [s[step.input] for s in samples]
        asks = [[{"role": "user", "content": self._render(step.instruct, {"artifact": a}, f"step {i} instruct")}] for a in artifacts]
        instructions = [r for (r,) in self._ask(asks, sampling)]
        asks = [[{"role": "user", "content": self._render(step.regenerate, {"instruction": x}, f"step {i} regenerate")}] for x in instructions]
        regenerated = [r for (r,) in self._ask(asks, sampling)]
        for s, a, x, r in zip(samples, artifacts, instructions, regenerated):
            similarity = difflib.SequenceMatcher(None, a, r, autojunk=False).ratio()
            s[step.output], s[f"{step.output}_artifact"] = x, r
            self._record(s, i, step, sampling, output=step.output, similarity=round(similarity, 3))
            if similarity < step.min_similarity:
                s["_dropped"] = f"step {i} reverse: regenerated artifact similarity {similarity:.2f} < {step.min_similarity}"

    def plurality(self, i: int, step: ds.Plurality, samples: list[Sample]) -> None:
        sampling = self._sampling(step.sampling)
        convs = [[{"role": "user", "content": self._render(step.prompt, s, f"step {i} prompt")}] for s in samples]
        lo, hi = step.band
        for s, replies in zip(samples, self._ask(convs, sampling, n=step.k)):
            answers = [final_number(r) for r in replies]
            vote = plurality_vote(answers, verifier="numeric")  # equal numbers agree: "0.50" with "0.5"
            majority, agreement = vote.majority, vote.agreement
            s[step.output], s[f"{step.output}_agreement"] = majority, agreement
            self._record(s, i, step, sampling, answers=answers, agreement=agreement)
            if not lo <= agreement <= hi:
                s["_dropped"] = f"step {i} plurality: agreement {agreement:.2f} outside [{lo}, {hi}]"

    def verify(self, i: int, step: ds.Verify, samples: list[Sample]) -> None:
        for s in samples:
            problem = {k: self._render(v, s, f"step {i} verify.problem.{k}") for k, v in step.problem.items()}
            problem["verifier"] = step.verifier
            verdict = verify(problem, self._render(f"{{{step.completion}}}", s, f"step {i} verify.completion"))
            s["_verdict"] = {"verifier": step.verifier, "ok": verdict.ok, "detail": verdict.detail}
            if verdict.isolation:  # how contained the verified code was
                s["_verdict"]["isolation"] = verdict.isolation
            self._record(s, i, step, None, verdict=s["_verdict"])
            if not verdict.ok:
                s["_dropped"] = f"step {i} verify: {verdict.detail}"

    # -- the whole workflow ------------------------------------------------------------------------
    def run(self, samples: list[Sample]) -> list[Sample]:
        for i, step in enumerate(self.dtype.steps):
            live = _live(samples)
            if live:
                getattr(self, step.kind)(i, step, live)
        return samples
