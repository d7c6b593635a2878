#!/usr/bin/env python3
"""Check that every held-out eval answer is taught by the demo set.

For each item of assets/eval/demo.jsonl with a `source`, the codes and numbers
in its reference answer (E-63, HF-220, 45, 1.8, ...) must appear both in the
named document and in the Q&A material (qa_train.jsonl + faq.csv). A model can
only be expected to learn a fact that its training data states; this script
catches an edit to one file that leaves the others behind.

Also checks the eval format: ids unique, choice answers among the choices,
and no eval question copied verbatim from the training Q&A.

Run from the repository root:  python3 scripts/check_demo_facts.py
Needs pdftotext (poppler-utils) for the PDF; standard library otherwise.
"""

import csv
import io
import json
import os
import re
import subprocess
import sys
import zipfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEMO = os.path.join(ROOT, "assets", "demo")
EVAL = os.path.join(ROOT, "assets", "eval", "demo.jsonl")

KEY = re.compile(r"[A-Z]{1,3}-[A-Z0-9]+(?:-[0-9]+)?|\d+(?:[.,]\d+)*")


def text_of(name):
    path = os.path.join(DEMO, name)
    raw = open(path, "rb").read()
    if name.endswith(".docx"):
        xml = zipfile.ZipFile(path).read("word/document.xml").decode("utf-8")
        return " ".join(re.findall(r"<w:t[^>]*>([^<]*)</w:t>", xml))
    if name.endswith(".pdf"):
        out = subprocess.run(["pdftotext", path, "-"], check=True, capture_output=True).stdout
        return out.decode("utf-8")
    if raw.startswith(b"\xff\xfe"):
        return raw[2:].decode("utf-16-le")
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        return raw.decode("cp1256")


def qa_text():
    parts = []
    with open(os.path.join(DEMO, "qa_train.jsonl"), encoding="utf-8") as f:
        pairs = [json.loads(line) for line in f if line.strip()]
    parts += [p["question"] + " " + p["answer"] for p in pairs]
    with open(os.path.join(DEMO, "faq.csv"), encoding="utf-8-sig", newline="") as f:
        rows = list(csv.DictReader(f))
    parts += [r["question"] + " " + r["answer"] for r in rows]
    return " ".join(parts), {p["question"] for p in pairs} | {r["question"] for r in rows}


def main():
    qa, train_questions = qa_text()
    docs = {}
    failures = []
    ids = set()
    with open(EVAL, encoding="utf-8") as f:
        items = [json.loads(line) for line in f if line.strip()]
    for it in items:
        if it["id"] in ids:
            failures.append(f"{it['id']}: duplicate id")
        ids.add(it["id"])
        if it["task"] == "choice" and it["answer"] not in it["choices"]:
            failures.append(f"{it['id']}: answer not among the choices")
        if it["question"] in train_questions:
            failures.append(f"{it['id']}: question copied from the training Q&A")
        src = it.get("source")
        if not src:
            continue
        if src not in docs:
            docs[src] = text_of(src)
        for key in KEY.findall(it["answer"]):
            if key not in docs[src]:
                failures.append(f"{it['id']}: '{key}' not in {src}")
            if key not in qa:
                failures.append(f"{it['id']}: '{key}' not in the training Q&A")
    for line in failures:
        print(line)
    print(f"{len(items)} eval items, {len(docs)} source documents, {len(failures)} problems")
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
