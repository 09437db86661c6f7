"""The echo guard's CPU per streamed chunk, in process, for longer replies and more sources.

Shows `EchoGuard.feed` costs the same per chunk however long the reply and the sources are
(the index of the sources is built once per turn, in `__init__`, and that is reported too).
Run: .venv/bin/python -m bench.echo
"""

from __future__ import annotations

import argparse
import random
import time

import multi_model_conversation as mmc

# Words of an ordinary discussion: replies share many of them with the sources, so runs of a
# few words start and break all the time, as in a real conversation.
VOCAB = (
    "the a to of and I we you it is that for on with as this be at by not but agree Ana Ben "
    "Chen hut train lake food plan weekend early book cheap station hours bread cheese soup "
    "think should would could maybe yes no point good idea route snow pass parking morning"
).split()


def text(words: int, rng: random.Random) -> str:
    return " ".join(rng.choice(VOCAB) for _ in range(words))


def measure(source_words: int, reply_words: int, chunk: int = 4) -> dict:
    """CPU µs per chunk of `feed`, and ms for building the guard over the sources."""
    rng = random.Random(1)
    sources = [text(source_words // 10, rng) for _ in range(10)]
    reply = text(reply_words, rng)
    chunks = [reply[i : i + chunk] for i in range(0, len(reply), chunk)]
    t0 = time.process_time()
    guard = mmc.EchoGuard(sources)
    build = time.process_time() - t0
    t0 = time.process_time()
    shown = [guard.feed(c) for c in chunks]
    shown.append(guard.flush())
    feed = time.process_time() - t0
    assert "".join(shown) == reply and not guard.echoed  # the words never repeat 40 in a row
    return {
        "sources": source_words,
        "reply": reply_words,
        "chunks": len(chunks),
        "us_per_chunk": feed / len(chunks) * 1e6,
        "build_ms": build * 1e3,
        "links": guard.index.links_followed / len(chunks),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes", default="1000,10000,100000")
    args = parser.parse_args()
    sizes = [int(n) for n in args.sizes.split(",")]
    rows = [measure(sizes[0], n) for n in sizes] + [measure(n, sizes[0]) for n in sizes[1:]]
    print(
        f"{'source words':>13} {'reply words':>12} {'chunks':>8} {'µs/chunk':>9} "
        f"{'links/chunk':>12} {'build':>9}"
    )
    for r in rows:
        print(
            f"{r['sources']:>13} {r['reply']:>12} {r['chunks']:>8} {r['us_per_chunk']:>9.2f} "
            f"{r['links']:>12.2f} {r['build_ms']:>7.1f}ms"
        )
    by_reply = rows[len(sizes) - 1]["us_per_chunk"] / rows[0]["us_per_chunk"]
    by_sources = rows[-1]["us_per_chunk"] / rows[0]["us_per_chunk"]
    print(f"per-chunk cost, longest / shortest reply: {by_reply:.2f}x (target <= 2x)")
    print(f"per-chunk cost, most / fewest source words: {by_sources:.2f}x (target <= 2x)")


if __name__ == "__main__":
    main()
