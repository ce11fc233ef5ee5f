"""Three structured-generation engines on our tokenizer: what it costs to constrain one record.

    python bench/grammar_engines.py [--model DIR] [--records 40]

For each engine (llguidance, xgrammar, outlines-core) and each of two grammars built from
real records of the official test inputs (CHIP-CTC: one of ~30 labels; CMeEE-V2: the NER
layout with free mentions, written as each engine's grammar language), with our
sentencepiece tokenizer with byte fallback: the time to compile one record's grammar (every
record has its own options, so this is paid per record), the time of one step's token mask
(walking the gold answer's tokens), and whether the gold answer is accepted. The CHIP-CTC
grammar is the same language everywhere; NER is written without substring spans (only
llguidance has them), so all three compile the same language.
"""
import argparse
import json
import statistics
import time

from _util import data_file, default_model, read_jsonl, report

import torch


# Every grammar allows the leading space of sentencepiece's first piece (`▁治疗`).
def lark_cls(options):
    return 'start: " "? (' + " | ".join(json.dumps(o, ensure_ascii=False) for o in options) + ")\n"


def ebnf_cls(options):
    return 'root ::= " "? (' + " | ".join(json.dumps(o, ensure_ascii=False) for o in options) + ")\n"


def regex_escape(text):
    import re

    return re.escape(text)


def ner_regex(types):
    line = "(" + "|".join(regex_escape(t + "实体：") for t in types) + ")([^，\\n]+(，[^，\\n]+)*)?"
    return f" ?上述句子中的实体包含：(\\n{line})*"


def lark_ner(types):
    return "start: /" + ner_regex(types).replace("/", "\\/") + "/\n"


def ebnf_ner(types):
    alts = " | ".join(json.dumps(t + "实体：", ensure_ascii=False) for t in types)
    return ('root ::= " "? "上述句子中的实体包含：" ("\\n" line)*\nline ::= (' + alts + ') (m ("，" m)*)?\n'
            'm ::= [^，\\n]+\n')


class Llguidance:
    name = "llguidance"

    def __init__(self, tok):
        from chatglm.constraint import GrammarEngine

        self.engine = GrammarEngine(tok, len(tok))
        self.bitmask = torch.empty(self.engine.words, dtype=torch.int32)

    def compile(self, kind, payload):
        import llguidance

        return llguidance.LLMatcher(self.engine.tokenizer, lark_cls(payload) if kind == "cls" else lark_ner(payload),
                                    log_level=0)

    def mask(self, m):  # the engine's own bitmask, as the others' (no unpacking to a bool mask)
        m.unsafe_compute_mask_ptr(self.bitmask.data_ptr(), self.engine.words * 4)
        return self.bitmask

    def accept(self, m, token):
        return m.consume_token(token)


class Xgrammar:
    name = "xgrammar"

    def __init__(self, tok):
        import xgrammar as xgr

        self.xgr = xgr
        pieces = [tok.sp.id_to_piece(i) if i < tok.n_words else f"<special_{i}>" for i in range(len(tok))]
        info = xgr.TokenizerInfo(pieces, vocab_type=xgr.VocabType.BYTE_FALLBACK, vocab_size=len(tok),
                                 stop_token_ids=[tok.eos_token_id], add_prefix_space=True)
        self.compiler = xgr.GrammarCompiler(info, cache_enabled=False)
        self.bitmask = xgr.allocate_token_bitmask(1, len(tok))

    def compile(self, kind, payload):
        grammar = self.compiler.compile_grammar(ebnf_cls(payload) if kind == "cls" else ebnf_ner(payload))
        return self.xgr.GrammarMatcher(grammar)

    def mask(self, m):
        m.fill_next_token_bitmask(self.bitmask)
        return self.bitmask

    def accept(self, m, token):
        return m.accept_token(token)


class OutlinesCore:
    name = "outlines-core"

    def __init__(self, tok):
        import outlines_core

        self.oc = outlines_core
        by_bytes = {}
        for i, b in enumerate(tok.token_bytes()):
            if b and i != tok.eos_token_id:
                by_bytes.setdefault(b, []).append(i)
        self.vocab = outlines_core.Vocabulary(tok.eos_token_id, by_bytes)
        self.words = (len(tok) + 31) // 32

    def compile(self, kind, payload):
        import re

        regex = "|".join(regex_escape(o) for o in payload) if kind == "cls" else ner_regex(payload)
        return self.oc.Guide(self.oc.Index(" ?(" + regex + ")" if kind == "cls" else regex, self.vocab))

    def mask(self, g):
        return g.get_tokens()

    def accept(self, g, token):
        g.advance(token)
        return True


def measure(engine, tok, records, kind):
    compile_s, step_s, accepted = [], [], 0
    for r in records:
        payload = r["answer_choices"]
        start = time.perf_counter()
        m = engine.compile(kind, payload)
        compile_s.append(time.perf_counter() - start)
        ok = True
        for token in tok.encode_text(r["target"]):
            start = time.perf_counter()
            engine.mask(m)
            step_s.append(time.perf_counter() - start)
            try:
                ok = ok and engine.accept(m, token)
            except Exception:
                ok = False
            if not ok:
                break
        accepted += ok
    return {"compile_ms_median": round(1e3 * statistics.median(compile_s), 3),
            "compile_ms_max": round(1e3 * max(compile_s), 3),
            "mask_ms_median": round(1e3 * statistics.median(step_s), 4) if step_s else None,
            "gold_accepted": f"{accepted}/{len(records)}"}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=None)
    ap.add_argument("--records", type=int, default=40)
    args = ap.parse_args()
    from chatglm.tokenizer import ChatGLMTokenizer

    model_dir = args.model or default_model()
    tok = ChatGLMTokenizer.from_pretrained(model_dir)
    data = read_jsonl(data_file("train.json", "train.json"))
    ctc = [r for r in data if r["task_dataset"] == "CHIP-CTC"][:args.records]
    ner = [r for r in data if r["task_dataset"] == "CMeEE-V2"][:args.records]
    torch.set_num_threads(1)
    results = {}
    for cls in (Llguidance, Xgrammar, OutlinesCore):
        try:
            start = time.perf_counter()
            engine = cls(tok)
            setup = time.perf_counter() - start
            results[cls.name] = {"tokenizer_setup_s": round(setup, 3), "CHIP-CTC": measure(engine, tok, ctc, "cls"),
                                 "CMeEE-V2": measure(engine, tok, ner, "ner")}
        except Exception as e:  # an engine that cannot take this tokenizer is a result too
            results[cls.name] = {"error": f"{type(e).__name__}: {e}"[:300]}
    results["llguidance_batch_mask_ms"] = batch_mask(tok, ctc + ner)
    report({"bench": "grammar_engines", "model": model_dir, "vocab": len(tok), "records_per_grammar": args.records,
            **results})


def batch_mask(tok, records) -> dict:
    """What one decode step of a batch costs in generation: every row's mask (chatglm/constraint.py,
    unpacked to a bool mask over the vocabulary, byte twins merged), rows mid-answer."""
    from cblue.answer_grammar import grammars_for_records
    from chatglm.constraint import GrammarEngine

    engine = GrammarEngine(tok, len(tok))
    grammars = grammars_for_records(records, "v1")
    out = {}
    for batch in (16, 64):
        matchers = []
        for r, g in zip((records * 4)[:batch], (grammars * 4)[:batch]):
            m = engine.matcher(g)
            for t in tok.encode_text(r["target"])[:3]:
                m.consume_token(t)
            matchers.append(m)
        times = []
        for _ in range(20):
            start = time.perf_counter()
            engine.forbidden(matchers)
            times.append(time.perf_counter() - start)
        out[f"batch_{batch}"] = round(1e3 * statistics.median(times), 3)
    return out


if __name__ == "__main__":
    main()
