"""Context propagation: the local store's second ranking step, after BM25.

A memory is one turn of a conversation, and the turn that answers a question is often next to the turn that
names its subject (a follow-up, a reply): the turns memproxy stores name their conversation (metadata
`conversation`). So the store ranks in two steps:
1. BM25 over the scope's index gives the CANDIDATES best memories, each with its score (higher is better);
2. `propagate` adds to each memory NEIGHBOUR_WEIGHT times the score of each of its neighbours among the
   NEIGHBOURS_OF best candidates (a memory's neighbours: the memories of its conversation just before and after
   it in its scope, no more than NEIGHBOUR_GAP seconds apart), which can also bring in a neighbour that BM25 did
   not find. The store reads those candidates' neighbours with NEIGHBOURS_SQL, one index step each.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

CANDIDATES = 50  # memories BM25 ranks before propagation
NEIGHBOURS_OF = 10  # best candidates whose neighbours are looked up
NEIGHBOUR_WEIGHT = 0.5  # share of a neighbour's score a memory receives
NEIGHBOUR_GAP = 3600.0  # seconds: memories further apart in time are not neighbours

_CONVERSATION = "CASE WHEN json_valid({m}.metadata) THEN json_extract({m}.metadata, '$.conversation') END"
# Each candidate's previous and next memory of its conversation (metadata `conversation`) in its scope, in
# (created_at, id) order and within NEIGHBOUR_GAP seconds of it: rows (id, previous id or NULL, next id or NULL).
# A memory of no conversation (a note added by hand) has no neighbours. Named parameters: scope, ids (the
# candidates' ids as a JSON array), gap (seconds). Each lookup steps along the index on memories(scope, created_at).
NEIGHBOURS_SQL = f"""
SELECT c.id,
    (SELECT p.id FROM memories AS p WHERE p.scope = :scope AND p.created_at >= c.created_at - :gap
        AND (p.created_at, p.id) < (c.created_at, c.id) AND {_CONVERSATION.format(m="p")} = c.conversation
        ORDER BY p.created_at DESC, p.id DESC LIMIT 1),
    (SELECT n.id FROM memories AS n WHERE n.scope = :scope AND n.created_at <= c.created_at + :gap
        AND (n.created_at, n.id) > (c.created_at, c.id) AND {_CONVERSATION.format(m="n")} = c.conversation
        ORDER BY n.created_at, n.id LIMIT 1)
FROM (
    SELECT m.id, m.created_at, {_CONVERSATION.format(m="m")} AS conversation
    FROM json_each(:ids) AS j CROSS JOIN memories AS m ON m.id = j.value WHERE +m.scope = :scope
) AS c
WHERE c.conversation IS NOT NULL
"""


def neighbours(rows: Iterable[Sequence[int | None]]) -> dict[int, tuple[int, ...]]:
    """NEIGHBOURS_SQL's rows as a map: candidate id -> the ids of its neighbours."""
    return {row[0]: tuple(n for n in row[1:] if n is not None) for row in rows if row[0] is not None}


def propagate(
    scores: Mapping[int, float], adjacent: Mapping[int, Sequence[int]], weight: float = NEIGHBOUR_WEIGHT
) -> list[tuple[int, float]]:
    """Memories ranked by their own score plus `weight` times the scores of their neighbours among the
    candidates: (id, score), best first; ties keep the candidates' order, then the order neighbours came in.

    `scores` maps each candidate to its score, best first (higher is better, none negative), `adjacent` a candidate to its
    neighbours (symmetric: a candidate's neighbour that is a candidate lists it back). A neighbour that is not
    a candidate is ranked by what it receives alone.
    """
    if not any(adjacent.values()):
        return list(scores.items())  # no neighbours: the candidates in their order
    total = dict(scores)
    for memory, score in scores.items():
        for other in adjacent.get(memory, ()):
            total[other] = total.get(other, 0.0) + weight * score
    order = {memory: i for i, memory in enumerate(total)}
    return sorted(total.items(), key=lambda item: (-item[1], order[item[0]]))
