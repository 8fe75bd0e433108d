"""Context propagation: the local store's second ranking step, after BM25.

A memory is one turn of a conversation, and the turn that answers a question is often next to the turn that
names its subject (a follow-up, a reply), or elsewhere in a conversation about that subject: the turns memproxy
stores name their conversation (metadata `conversation`). So the store ranks in two steps:
1. BM25 over the scope's index gives the CANDIDATES best memories, each with its score (higher is better);
2. `propagate` adds to each memory NEIGHBOUR_WEIGHT times the score of each of its neighbours among the
   NEIGHBOURS_OF best candidates (a memory's neighbours: the memories of its conversation just before and after
   it in its scope, no more than NEIGHBOUR_GAP seconds apart), which can also bring in a neighbour that BM25 did
   not find, and CONVERSATION_WEIGHT times the best score among the candidates of its conversation. The store
   reads the candidates' conversations and those neighbours with NEIGHBOURS_SQL, one index step each, or from
   the scope's Order, which it keeps in memory.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from operator import itemgetter
from typing import Any, NamedTuple

CANDIDATES = 50  # memories BM25 ranks before propagation
NEIGHBOURS_OF = 10  # best candidates whose neighbours are looked up
NEIGHBOUR_WEIGHT = 0.5  # share of a neighbour's score a memory receives
NEIGHBOUR_GAP = 3600.0  # seconds: memories further apart in time are not neighbours
CONVERSATION_WEIGHT = 0.5  # share of its conversation's best candidate score a memory receives (then / 1.5)

# The conversation of memory {m} (metadata `conversation`), NULL for none or for metadata SQLite cannot read.
CONVERSATION_OF = "CASE WHEN json_valid({m}.metadata) THEN json_extract({m}.metadata, '$.conversation') END"
# Each candidate's conversation (metadata `conversation`) and, for the first :near candidates, its previous and
# next memory of that conversation in its scope, in (created_at, id) order and within :gap seconds of it: rows (id,
# conversation, previous id or NULL, next id or NULL). A memory of no conversation (a note added by hand) has
# none. Named parameters: scope, ids (the candidates' ids as a JSON array, best first), near, gap. Each lookup
# steps along the index on memories(scope, created_at).
NEIGHBOURS_SQL = f"""
SELECT c.id, c.conversation,
    CASE WHEN c.rank < :near THEN (SELECT p.id FROM memories AS p WHERE p.scope = :scope
        AND p.created_at >= c.created_at - :gap AND (p.created_at, p.id) < (c.created_at, c.id)
        AND {CONVERSATION_OF.format(m="p")} = c.conversation ORDER BY p.created_at DESC, p.id DESC LIMIT 1) END,
    CASE WHEN c.rank < :near THEN (SELECT n.id FROM memories AS n WHERE n.scope = :scope
        AND n.created_at <= c.created_at + :gap AND (n.created_at, n.id) > (c.created_at, c.id)
        AND {CONVERSATION_OF.format(m="n")} = c.conversation ORDER BY n.created_at, n.id LIMIT 1) END
FROM (
    SELECT m.id, m.created_at, j.key AS rank, {CONVERSATION_OF.format(m="m")} AS conversation
    FROM json_each(:ids) AS j CROSS JOIN memories AS m ON m.id = j.value WHERE +m.scope = :scope
) AS c
WHERE c.conversation IS NOT NULL
"""


class Context(NamedTuple):
    """What a search knows of its candidates (from NEIGHBOURS_SQL or a kept Order): each one's conversation, and
    its neighbours."""

    conversations: dict[int, Any]  # candidate id -> its conversation
    adjacent: dict[int, tuple[int, ...]]  # candidate id -> the ids of its neighbours


def context(rows: Iterable[Sequence[Any]]) -> Context:
    """NEIGHBOURS_SQL's rows as a Context."""
    rows = [row for row in rows if row[0] is not None]
    return Context(
        {row[0]: row[1] for row in rows}, {row[0]: tuple(n for n in row[2:] if n is not None) for row in rows}
    )


# A scope's memories in (created_at, id) order, each with its conversation: rows (id, conversation or NULL,
# created_at). Parameters: scope, the most rows to read.
ORDER_SQL = f"""
SELECT m.id, {CONVERSATION_OF.format(m="m")}, m.created_at FROM memories AS m
WHERE m.scope = ? ORDER BY m.created_at, m.id LIMIT ?
"""


class Order:
    """A scope's turns read once (ORDER_SQL) and kept in memory, so that a search finds its candidates' Context
    without reading them again: the same Context as NEIGHBOURS_SQL's, for the memories read. The store extends it
    with the turns it writes (`add`, `replace`), as long as each comes last in its conversation."""

    __slots__ = ("conversation", "gap", "last", "next", "previous", "size")

    def __init__(self, rows: Iterable[Sequence[Any]], gap: float = NEIGHBOUR_GAP) -> None:
        self.conversation: dict[int, Any] = {}  # id -> its conversation
        self.previous: dict[int, int] = {}
        self.next: dict[int, int] = {}
        self.size = 0  # memories held, of a conversation or not
        self.gap = gap
        # conversation -> (the conversation, one object for all its memories; its latest memory's id and
        # created_at; the id and created_at of the one before it, or None)
        self.last: dict[Any, tuple[Any, int, float, int | None, float | None]] = {}
        for id_, conversation, at in rows:
            self.add(id_, conversation, at)

    def add(self, id_: int, conversation: Any, at: float) -> bool:
        """Memory `id_` of `conversation` (None: of none), created at `at`, added as its conversation's latest;
        False, and nothing changed, if it comes before that one in (created_at, id) order."""
        if conversation is not None:
            if (last := self.last.get(conversation)) is None:
                self.last[conversation] = (conversation, id_, at, None, None)
            else:
                conversation, before, before_at = last[:3]
                if (at, id_) < (before_at, before):
                    return False
                self._link(id_, at, before, before_at)
                self.last[conversation] = (conversation, id_, at, before, before_at)
            self.conversation[id_] = conversation
        self.size += 1
        return True

    def replace(self, id_: int, conversation: Any, at: float) -> bool:
        """Memory `id_` held, now of `conversation` and created at `at`; False if the Order cannot follow (it
        changed conversation, or it is not, or no longer, its conversation's latest): it must be read again."""
        key = self.conversation.get(id_)
        if key is None or conversation is None:
            return key is None and conversation is None
        last = self.last[key]
        if key != conversation or last[1] != id_ or at < last[2]:
            return False
        before, before_at = last[3], last[4]
        if before is not None:
            self.previous.pop(id_, None)
            if self.next.get(before) == id_:
                del self.next[before]
            self._link(id_, at, before, before_at)
        self.last[key] = (key, id_, at, before, before_at)
        return True

    def _link(self, id_: int, at: float, before: int, before_at: float) -> None:
        # as NEIGHBOURS_SQL compares: previous >= this - gap, next <= this + gap
        if before_at >= at - self.gap:
            self.previous[id_] = before
        if at <= before_at + self.gap:
            self.next[before] = id_

    def context(self, ids: Sequence[int], near: int) -> Context:
        """The Context of candidates `ids` (best first), with the neighbours of the first `near`."""
        get = self.conversation.get
        conversations = {i: c for i in ids if (c := get(i)) is not None}
        adjacent = dict.fromkeys(conversations, ())
        for i in ids[:near]:
            if i in conversations:
                before, after = self.previous.get(i), self.next.get(i)
                if before is None:
                    adjacent[i] = () if after is None else (after,)
                else:
                    adjacent[i] = (before,) if after is None else (before, after)
        return Context(conversations, adjacent)


def propagate(
    scores: Mapping[int, float], found: Context, weight: float = NEIGHBOUR_WEIGHT, lift: float = CONVERSATION_WEIGHT
) -> list[tuple[int, float]]:
    """Memories ranked by their own score, plus `weight` times the scores of their neighbours among the
    candidates, plus `lift` times the best candidate score of their conversation, all over 1 + `lift` (so the
    best match of a conversation, with no neighbours among the candidates, keeps its score): (id, score), best
    first; ties keep the candidates' order, then the order neighbours came in.

    `scores` maps each candidate to its score, best first (higher is better, none negative). `found.adjacent`
    maps a candidate to its neighbours (symmetric: a candidate's neighbour that is a candidate lists it back); a
    neighbour that is not a candidate is ranked by what it receives, and is of its source's conversation.
    """
    if not found.conversations:
        return list(scores.items())  # no conversations: the candidates in their order
    total = dict(scores)
    conversation = dict(found.conversations)
    for memory, score in scores.items():
        if others := found.adjacent.get(memory):
            share = weight * score
            for other in others:
                total[other] = total.get(other, 0.0) + share
                if other not in conversation:
                    conversation[other] = conversation[memory]
    best: dict[Any, float] = {}  # conversation -> its best candidate score
    of = conversation.get
    for memory, score in scores.items():
        if (key := of(memory)) is not None and score > best.get(key, -1.0):
            best[key] = score
    # a memory of no conversation is its own: it keeps its score
    ranked = [
        (m, (x + lift * (best[key] if (key := of(m)) is not None else scores[m])) / (1 + lift))
        for m, x in total.items()
    ]
    ranked.sort(key=itemgetter(1), reverse=True)  # stable: ties keep the order they came in
    return ranked
