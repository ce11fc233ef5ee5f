"""Text2DT decision-tree metrics (the official text2dt_eval_func.py, restated).

A tree is its nodes in pre-order; each node has a role (C: condition, D: decision), a
logical_rel and triples. The structure is rebuilt from the role sequence alone: each C takes
the next two finished D-subtrees as its left (condition holds) and right children.
"""
from __future__ import annotations

import copy

_EMPTY_NODE = {"role": "", "triples": [], "logical_rel": "null"}


def node_matrix(tree: list[dict]) -> list[list]:
    """m[i][j] = 'L'/'R' if j is i's left/right child, 'F' if j is i's parent; else 0."""
    roles = [node["role"] for node in tree]
    n = len(roles)
    m = [[0] * n for _ in range(n)]
    passes = 0
    while roles[0] != "D":
        for i in range(n):
            if roles[i] != "C":
                continue
            found = 0
            for j in range(i + 1, n):
                if roles[j] == "D" and found == 0:
                    found, left = 1, j
                elif roles[j] == "X":
                    continue
                elif roles[j] == "D" and found == 1:
                    right = j
                    roles[i] = "D"  # the subtree i..right is complete: it now acts as one leaf
                    m[left][i] = m[right][i] = "F"
                    m[i][left], m[i][right] = "L", "R"
                    for k in range(i + 1, right + 1):
                        roles[k] = "X"
                    found = 2
                    break
                elif roles[j] == "C":
                    break
            if found == 2:
                break
        passes += 1
        if passes > 100:  # a malformed role sequence never reduces to one D
            break
    return m


def _node_distance(a: dict, b: dict | None) -> int:
    b = _EMPTY_NODE if b is None else b
    ta, tb = set(a["triples"]), set(b["triples"])
    return (a["role"] != b["role"]) + (a["logical_rel"] != b["logical_rel"]) + len((ta | tb) - (ta & tb))


def _is_leaf(row) -> bool:
    return "L" not in row and "R" not in row


def _subtree_cost(tree, m, root) -> int:
    """Cost of the nodes below `root` matched against nothing (children first-left)."""
    cost, stack = 0, [m[root].index("R"), m[root].index("L")]
    while stack:
        s = stack.pop()
        cost += _node_distance(tree[s], None)
        if "L" in m[s] and "R" in m[s]:
            stack.extend([m[s].index("R"), m[s].index("L")])
    return cost


def edit_distance(pred, gold, pm, gm) -> int:
    dist, stack_p, stack_g = 0, [0], [0]
    try:
        while stack_p:
            sp, sg = stack_p.pop(), stack_g.pop()
            p_leaf, g_leaf = _is_leaf(pm[sp]), _is_leaf(gm[sg])
            if p_leaf and not g_leaf:
                dist += _node_distance(pred[sp], gold[sg])
                dist += _subtree_cost(gold, gm, sg)
            elif ("L" in pm[sp] and "R" in pm[sp]) and ("L" not in gm[sg] or "R" not in gm[sg]):
                dist += _node_distance(pred[sp], gold[sg])
                dist += _subtree_cost(pred, pm, sp)
            elif p_leaf and g_leaf:
                dist += _node_distance(pred[sp], gold[sg])
            else:
                stack_p.extend([pm[sp].index("R"), pm[sp].index("L")])
                stack_g.extend([gm[sg].index("R"), gm[sg].index("L")])
                dist += _node_distance(pred[sp], gold[sg])
    except (ValueError, IndexError):
        pass  # the official stops counting at a malformed tree and keeps what it has
    return dist


def _paths(tree, m, out: list) -> None:
    for leaf in [i for i in range(len(m)) if _is_leaf(m[i])]:
        node, path = leaf, [tree[leaf]]
        while node != 0:
            parent = m[node].index("F")
            path.extend([m[parent][node], tree[parent]])
            node = parent
        out.append(path)


def _same_node(a: dict, b: dict) -> bool:
    return a["role"] == b["role"] and a["logical_rel"] == b["logical_rel"] and set(a["triples"]) == set(b["triples"])


def _same_path(p1, p2) -> bool:
    if len(p1) != len(p2):
        return False
    for a, b in zip(p1, p2):
        if isinstance(a, dict) and isinstance(b, dict):
            if not _same_node(a, b):
                return False
        elif a != b:
            return False
    return True


def decision_paths(pred, gold, pm, gm) -> tuple[int, int, int]:
    """(matched, predicted, gold) root-to-leaf paths; on a malformed tree, matched is 0 and the
    counts are those collected before it (as the official)."""
    paths_p, paths_g = [], []
    try:
        _paths(pred, pm, paths_p)
        _paths(gold, gm, paths_g)
        matched = sum(1 for a in paths_p if any(_same_path(a, b) for b in paths_g))
    except (ValueError, IndexError):
        matched = 0
    return matched, len(paths_p), len(paths_g)


def _lowered(tree: list[dict]) -> list[dict]:
    return [dict(node, triples=[tuple(x.lower() for x in t) for t in node["triples"]]) for node in tree]


def single_tree_counts(pred: list[dict], gold: list[dict]) -> dict:
    pred, gold = _lowered(pred), _lowered(gold)
    pm, gm = node_matrix(pred), node_matrix(gold)
    tp_p = {t for node in pred for t in node["triples"]}
    tp_g = {t for node in gold for t in node["triples"]}
    path_ok, path_p, path_g = decision_paths(copy.deepcopy(pred), copy.deepcopy(gold), pm, gm)
    nodes_p = [n for n in pred if n["triples"]]
    nodes_g = [n for n in gold if n["triples"]]
    return {
        "tree_equal": int(len(pred) == len(gold) and all(_same_node(a, b) for a, b in zip(pred, gold))),
        "triples_pred": len(tp_p), "triples_gold": len(tp_g),
        "paths_ok": path_ok, "paths_pred": path_p, "paths_gold": path_g,
        "edit": edit_distance(pred, gold, pm, gm),
        "nodes_ok": sum(1 for a in nodes_p for b in nodes_g if _same_node(a, b)),
        "nodes_pred": len(nodes_p), "nodes_gold": len(nodes_g),
    }


def _f1(ok: float, pred: float, gold: float) -> float:
    p, r = ok / pred, ok / gold
    return 2 * p * r / (p + r)


def text2dt_scores(gold_trees: list[list[dict]], pred_trees: list[list[dict]]) -> dict:
    eps = 0.000001  # every count starts here in the official, so nothing is 0/0
    node_ok = node_p = node_g = path_ok = path_p = path_g = eps
    edit = max_edit = 0
    for gold, pred in zip(gold_trees, pred_trees):
        c = single_tree_counts(pred, gold)
        edit += c["edit"]
        max_edit += (c["triples_pred"] + c["nodes_pred"] * 2) + (c["triples_gold"] + c["nodes_gold"] * 2)
        node_ok, node_p, node_g = node_ok + c["nodes_ok"], node_p + c["nodes_pred"], node_g + c["nodes_gold"]
        path_ok, path_p, path_g = path_ok + c["paths_ok"], path_p + c["paths_pred"], path_g + c["paths_gold"]
    # The official divides by zero when no tree has a triple; we call that ratio 1 only if
    # nothing needed editing.
    ratio = 1 - edit / max_edit if max_edit else float(edit == 0)
    return {"tree_lenv_radio": ratio, "node_f1": _f1(node_ok, node_p, node_g),
            "path_f1": _f1(path_ok, path_p, path_g)}
