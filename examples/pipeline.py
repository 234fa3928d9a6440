"""Pipelines: chains of stages, each with its own worker processes.

Run it with:  python examples/pipeline.py

1. The classic chain of processes linked by pipes, each filtering what the
   one before it sends: numbers, then those divisible by 2, then by 5.
2. A text-processing chain over a generated corpus: split documents into
   words, normalize them, drop stop words, and count, with one line of the
   corpus broken on purpose to show what ``on_error="collect"`` yields.
"""

from __future__ import annotations

import collections
import random
import string
import sys
import time
from collections.abc import Iterator

from pool import FailedItem, Pipeline

STOP_WORDS = frozenset(
    ["the", "a", "an", "and", "or", "of", "to", "in", "is", "it", "that", "on", "for", "with", "as", "was"]
)


def divisible_by_2(n: int) -> bool:
    return n % 2 == 0


def divisible_by_5(n: int) -> bool:
    return n % 5 == 0


def documents(count: int) -> Iterator[str]:
    """A generated corpus, produced lazily: the pipeline reads it as it goes."""
    rng = random.Random(7)
    vocabulary = ["".join(rng.choices(string.ascii_lowercase, k=rng.randint(3, 9))) for _ in range(400)]
    vocabulary += sorted(STOP_WORDS)
    for number in range(count):
        if number == 1234:
            yield None  # type: ignore[misc]  # a broken record, on purpose
            continue
        words = rng.choices(vocabulary, k=rng.randint(20, 80))
        yield " ".join(w.capitalize() if rng.random() < 0.1 else w for w in words) + "."


def split_words(document: str) -> list[str]:
    return document.split()


def normalize(word: str) -> str:
    return word.strip(string.punctuation).lower()


def is_content_word(word: str) -> bool:
    return bool(word) and word not in STOP_WORDS


def main() -> int:
    print("1. numbers -> divisible by 2 -> divisible by 5")
    chain = Pipeline(range(100)).filter(divisible_by_2).filter(divisible_by_5)
    print("  ", *chain)

    print("\n2. words of 20,000 generated documents")
    start = time.perf_counter()
    words = (
        Pipeline(documents(20_000), on_error="collect")
        .flat_map(split_words, workers=2)
        .map(normalize, workers=2)
        .filter(is_content_word)
    )
    counts: collections.Counter[str] = collections.Counter()
    failures = []
    for word in words:
        if isinstance(word, FailedItem):
            failures.append(word)
        else:
            counts[word] += 1
    elapsed = time.perf_counter() - start
    print(f"   {sum(counts.values()):,} words, {len(counts):,} distinct, in {elapsed:.2f} s")
    print("   most common:", ", ".join(f"{w} ({n})" for w, n in counts.most_common(5)))
    for failure in failures:
        print(
            f"   failed: document {failure.position} in stage {failure.stage!r}: "
            f"{type(failure.error).__name__}: {failure.error}"
        )
    print(f"\n   {'stage':<16} {'in':>10} {'out':>10} {'failed':>6}  busy")
    for stage in words.stats():
        print(
            f"   {stage.name:<16} {stage.items_in:>10,} {stage.items_out:>10,} "
            f"{stage.failed:>6}  {stage.busy_seconds:.2f} s"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
