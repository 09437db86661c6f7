"""The echo guard: its CPU per streamed chunk, and what it finds in a real small model's turns.

    python -m bench.echo                  # µs per chunk; the index's cost per request
    python -m bench.echo --real-model     # SmolLM2-135M conversations, measured by the guard

The first shows `EchoGuard.feed` costs the same per chunk however long the reply and the
sources are; then what indexing the sources costs a request, with 1,000-10,000 turns and
100,000-1,000,000 characters of history, side by side: before (issue 29), every request
(each turn, tool round, retry, each of a council's five answers) built the index afresh from
every turn it was shown; now the run's `EchoIndex` indexes a turn once, when a request is
first shown it, so a request costs what is new.
The second serves SmolLM2-135M (see tests/integration/real_model.py; needs the cached server
venv that `scripts/test --real-model` builds) and lets three participants talk with the pipe's
own prompts, history format, context fitting and stop sequences, but no guard, so each reply is
what the model wrote; then it counts the replies the echo guard would end, and the longest run
each reply copied from what it was shown.
"""

from __future__ import annotations

import argparse
import json
import random
import tempfile
import time
from pathlib import Path

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


def history(turns: int, chars: int, rng: random.Random) -> list[mmc.Turn]:
    """A conversation of `turns` participants' turns, `chars` characters in all."""
    words = max(1, chars // turns // 5)  # VOCAB's words average about 4 letters and a space
    return [mmc.Turn(None, "Let's plan a weekend trip to the mountains.")] + [
        mmc.Turn("ABCDE"[i % 5], text(words, rng)) for i in range(turns)
    ]


def ms(fn) -> float:
    t0 = time.process_time()
    fn()
    return (time.process_time() - t0) * 1e3


def request_cost(turns: int, chars: int, later: int = 10) -> dict:
    """ms of indexing for: a request before (built afresh), the run's first request now (the
    history once), a later request now (one new turn each), a council round of five."""
    rng = random.Random(2)
    shown = history(turns, chars, rng)
    prompts = [system_prompt(a, "A hiker.", list("ABCDE"), 0, 3) for a in "ABCDE"]
    old = ms(lambda: mmc.EchoGuard(mmc.echo_sources(prompts[0], shown)))
    echoes = mmc.EchoIndex()
    first = ms(lambda: echoes.guard(prompts[0], shown))
    new = []
    for i in range(later):
        shown.append(mmc.Turn("ABCDE"[i % 5], text(40, rng)))
        new.append(ms(lambda prompt=prompts[i % 5]: echoes.guard(prompt, shown)))
    shown.append(mmc.Turn("A", text(40, rng)))
    old_council = ms(lambda: [mmc.EchoGuard(mmc.echo_sources(p, shown)) for p in prompts])
    council = ms(
        lambda: [echoes.guard(p, shown, own=a) for p, a in zip(prompts, "ABCDE", strict=True)]
    )
    return {
        "turns": turns,
        "chars": sum(len(t.content) for t in shown),
        "old": old,
        "first": first,
        "new": sum(new) / len(new),
        "old_council": old_council,
        "council": council,
    }


def print_request_costs(sizes: list[tuple[int, int]]) -> None:
    print(
        f"\n{'turns':>6} {'history':>10} | {'request':>9} {'request':>9} {'ratio':>7} | "
        f"{'council':>9} {'council':>9} {'ratio':>7} | {'1st request':>11}"
    )
    print(f"{'':>6} {'chars':>10} | {'before':>9} {'now':>9} {'':>7} | {'before':>9} {'now':>9}")
    for turns, chars in sizes:
        r = request_cost(turns, chars)
        print(
            f"{r['turns']:>6} {r['chars']:>10,} | {r['old']:>7.1f}ms {r['new']:>7.2f}ms "
            f"{r['old'] / r['new']:>6.0f}x | {r['old_council']:>7.0f}ms {r['council']:>7.2f}ms "
            f"{r['old_council'] / r['council']:>6.0f}x | {r['first']:>9.1f}ms"
        )
    print(
        "request: indexing for one more request after one new turn (a turn, a tool round, a\n"
        "retry); council: a round's five answers at once; 1st request: the run's first, which\n"
        "now indexes the history once (before, every request cost that much)."
    )


def longest_run(sources: list[str], reply: str) -> int:
    """The most consecutive words of `reply` that stand in one of `sources`."""
    index = mmc.PassageIndex(sources)
    state = length = best = 0
    for word in filter(None, map(mmc.echo_word, reply.split())):
        state, length = index.step(state, length, word)
        best = max(best, length)
    return best


def system_prompt(alias: str, persona: str, aliases: list[str], slot: int, rounds: int) -> str:
    """As the pipe builds it for round robin: persona, the turn rules, the shared instruction."""
    total = rounds * len(aliases)
    rules = (
        f"Round {slot // len(aliases) + 1} of {rounds}. "
        f"This is turn {slot + 1} of {total}; {total - slot - 1} more after yours."
    )
    others = ", ".join(a for a in aliases if a != alias)
    shared = mmc.fill_template(mmc.DEFAULT_SHARED_INSTRUCTION, {"alias": alias, "others": others})
    return "\n\n".join([persona, rules, shared])


def conversation(server, seed: int, rounds: int, n_ctx: int) -> list[dict]:
    """One unguarded conversation; each reply with what the echo guard makes of it."""
    from bench.labels import ask
    from tests.integration import real_model

    people = dict(real_model.PEOPLE)
    aliases = list(people)
    turns = [mmc.Turn(None, "Let's plan a weekend trip to the mountains.")]
    rows = []
    for slot in range(rounds * len(aliases)):
        alias = aliases[slot % len(aliases)]
        system = system_prompt(alias, people[alias], aliases, slot, rounds)
        room = int((n_ctx - 250) * mmc.DEFAULT_CHARS_PER_TOKEN)  # the pipe's first estimate
        kept = mmc.fit_turns(turns, room - len(system)).turns
        body = {
            "model": real_model.MODEL,
            "messages": [
                {"role": "system", "content": system},
                *mmc.messages_for(alias, kept, "User"),
            ],
            "max_tokens": 250,
            "temperature": 0.8,
            "seed": seed * 100 + slot,
            "stop": mmc.stop_sequences(alias, aliases, "User"),
        }
        reply = ask(server, body).strip()
        sources = mmc.echo_sources(system, kept)
        guard = mmc.EchoGuard(sources)
        shown = guard.feed(reply) + guard.flush()
        rows.append(
            {
                "seed": seed,
                "turn": slot + 1,
                "speaker": alias,
                "words": len(reply.split()),
                "longest_run": longest_run(sources, reply),
                "echoed": guard.echoed,
                "shown_chars": len(shown),
                "reply": reply,
            }
        )
        print(json.dumps(rows[-1], ensure_ascii=False), flush=True)
        turns.append(mmc.Turn(alias, reply))
    return rows


def real_model_check(seeds: int, rounds: int, out: Path | None) -> None:
    from tests.integration import real_model

    if not real_model.available():
        raise SystemExit("no llama server venv or GGUF in the cache: run scripts/test --real-model")
    n_ctx = real_model.N_CTX
    with tempfile.TemporaryDirectory(prefix="mmc-echo-") as tmp:
        server = real_model.LlamaServer(Path(tmp), n_ctx=n_ctx)
        server.start()
        try:
            rows = [r for seed in range(seeds) for r in conversation(server, seed, rounds, n_ctx)]
        finally:
            server.stop()
    runs = [r["longest_run"] for r in rows]
    print(f"\n{len(rows)} replies ({seeds} conversations x {rounds} rounds x 3 participants)")
    for at_least in (10, 20, 30, mmc.ECHO_RUN_WORDS):
        print(f"  longest copied run >= {at_least:>2} words: {sum(n >= at_least for n in runs)}")
    for why in ("run", "whole", "loop"):
        print(f"  ended by the echo guard ({why}): {sum(r['echoed'] == why for r in rows)}")
    if out:
        out.write_text(json.dumps(rows, indent=2, ensure_ascii=False))


def _ints(value: str) -> list[int]:
    return [int(n) for n in value.split(",")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1000,10000,100000")
    parser.add_argument("--turns", default="1000,10000", type=_ints, help="history's turns")
    parser.add_argument("--chars", default="100000,1000000", type=_ints, help="its characters")
    parser.add_argument("--real-model", action="store_true", help="SmolLM2 conversations")
    parser.add_argument("--seeds", type=int, default=3, help="with --real-model")
    parser.add_argument("--rounds", type=int, default=4, help="with --real-model")
    parser.add_argument("--json", type=Path, help="with --real-model: every reply, measured")
    args = parser.parse_args()
    if args.real_model:
        real_model_check(args.seeds, args.rounds, args.json)
        return
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
    print_request_costs([(t, c) for t in args.turns for c in args.chars])


if __name__ == "__main__":
    main()
