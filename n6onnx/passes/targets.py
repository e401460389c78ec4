"""Which attention blocks (and layers) the attention and block passes target, stably across passes.

Several passes may rewrite attention blocks of one model (``attention=fftmix:@0`` then
``attention=drop:@3``, or ``block=drop:@5``). Once a block is rewritten it no longer looks like
attention, so re-detecting would renumber the rest. Every pass therefore numbers the blocks as in
the model before the first attention/block pass (by the name of each block's anchor node), and
records the blocks it takes in ``ctx.claimed``; a later pass that names a taken block is refused.
"""

from __future__ import annotations

from typing import Callable, Sequence

from ..errors import BadArgumentError
from ..options import count, is_count


def renumber(blocks: Sequence, ctx, first_blocks: Callable[[], Sequence | None]) -> list:
    """Give ``blocks`` (found now, in graph order) the index they had before any attention pass.

    ``first_blocks()`` returns the blocks of the canonical original when the context has one."""
    if ctx is None:
        return list(blocks)
    if getattr(ctx, "anchors", None) is None:
        ref = first_blocks() or blocks
        names = [b.label for b in ref]
        ctx.anchors = names if len(set(names)) == len(names) and all(names) else []
    if not ctx.anchors:  # anchors not unique: positions are the only numbering there is
        return list(blocks)
    pos = {n: i for i, n in enumerate(ctx.anchors)}
    out = []
    for b in blocks:
        if b.label in pos:
            b.index = pos[b.label]
            out.append(b)
    return out


def known(ctx, seen: int) -> int:
    """How many blocks the indices a user names can refer to: those seen now, or as many as the model had
    before any attention pass (``renumber``'s anchors: a block rewritten earlier keeps its index)."""
    return max(seen, len(getattr(ctx, "anchors", None) or []))


def named(spec: str, kind: str, indices, candidates: Sequence, ctx, report, verb: str) -> list:
    """The ``candidates`` (blocks with ``.index``) that indices a user named (``spec``, e.g. ``attention=drop``) pick.
    None of them existing is a wrong index, refused naming the blocks there are; some missing is a note each."""
    idx = sorted(set(indices))
    have = known(ctx, report.seen)
    if idx[0] >= have:
        raise BadArgumentError(f"{spec}:@{','.join(map(str, idx))}: the model has {have} {kind} block(s)"
                               + (f", [0, {have - 1}]" if have else ""))
    there = {c.index for c in candidates}
    report.notes.extend(f"block {i} does not exist or cannot be {verb}; skipped" for i in idx if i not in there)
    return [c for c in candidates if c.index in set(idx)]


def claimed(ctx) -> dict[int, str]:
    if ctx is None:
        return {}
    if getattr(ctx, "claimed", None) is None:
        ctx.claimed = {}
    return ctx.claimed


def refuse_overlap(ctx, indices: Sequence[int], by: str) -> None:
    """Explicitly named blocks that an earlier pass already took: a clear error."""
    taken = claimed(ctx)
    clash = sorted(i for i in indices if i in taken)
    if clash:
        raise BadArgumentError(f"{by}: block(s) {', '.join(map(str, clash))} already rewritten by "
                               f"{', '.join(sorted({taken[i] for i in clash}))}; passes of one kind must target "
                               "disjoint blocks: give each block once")


def claim(ctx, indices: Sequence[int], by: str) -> None:
    refuse_overlap(ctx, indices, by)
    taken = claimed(ctx)
    for i in indices:
        taken[i] = by


def free(blocks: Sequence, ctx) -> list:
    taken = claimed(ctx)
    return [b for b in blocks if b.index not in taken]


def parse_drop(kind: str, option: str) -> tuple[str, object]:
    """``drop:N`` -> ("count", N); ``drop:@I,J`` (or ``drop:I,J``) -> ("indices", [I, J])."""
    method, _, arg = option.partition(":")
    if method != "drop":
        raise BadArgumentError(f"{kind}=drop:N or {kind}=drop:@I,J expected (got {kind}={option!r})")
    if is_count(arg):
        return "count", count(f"{kind}=drop:N", arg, 1)
    body = arg[1:] if arg.startswith("@") else arg
    parts = [p.strip() for p in body.split(",") if p.strip()]
    if parts and all(is_count(p) for p in parts) and ("," in arg or arg.startswith("@")):
        return "indices", sorted({int(p) for p in parts})
    raise BadArgumentError(f"{kind}=drop:N drops the N most redundant blocks (needs --calibrate); {kind}=drop:@I,J "
                           f"drops the named ones (0-based, graph order) (got {kind}={option!r})")
