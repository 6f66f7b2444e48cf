"""Mask-allocation policies beyond the paper's uniform ratio.

`budget`: one global budget instead of one ratio per site. Every element gets a damage score,
its variance over the mean variance of its site (the share of the site's variation that replacing
it by its mean removes, so sites of any scale compare), and a benefit, the MACs its producer chain
skips. Elements are masked in increasing damage per benefit until the skipped MACs reach R x the
MACs of all masked-able chains, the same saving the uniform policy at ratio R would give if every
site were equal. Damage is in variance units: scored as standard deviation per MAC, the costly
deep sites were masked almost completely and the network's output went constant.
`channel`: the S-VELCRO-style channel mode. Whole channels of a site (all their H x W elements)
become constants, lowest mean variance first, R of the channels of every site, so whole filters
are skipped.
"""

from __future__ import annotations

import numpy as np

from .errors import UsageError
from .masks import build_masks, check_finite_sites, check_ratio, ratio_count, uniform_ratios

POLICIES = ("uniform", "budget", "channel")


def make_masks(policy, stats, ratio, site_costs=None, exclude=()):
    """A MaskSet of `policy` at ratio R. `budget` needs site_costs (Model.site_costs(), in the
    model's site order, which breaks ties between sites)."""
    check_policy(policy)
    ratio = check_ratio(ratio)
    params = {"name": policy, "ratio": ratio, "exclude": list(exclude)}
    if policy == "uniform":
        return build_masks(stats, uniform_ratios(stats, ratio, exclude), params)
    if policy == "channel":
        return _channel_masks(stats, ratio, exclude, params)
    if site_costs is None:  # budget
        raise UsageError("the budget policy needs the model (velcro compress --model MODEL)")
    return _budget_masks(stats, ratio, site_costs, exclude, params)


def check_policy(policy) -> None:
    """UsageError unless `policy` is one of POLICIES."""
    if policy not in POLICIES:
        raise UsageError(f"unknown policy '{policy}'; choose from {', '.join(POLICIES)}")


def _budget_masks(stats, ratio, site_costs, exclude, params):
    # the sites in the model's order (site_costs'), not the statistics': a stats file lists its
    # sites by name, and equal scores across sites (every zero variance) are taken in site order
    names = [s for s in site_costs if s in stats.sites and s not in exclude and site_costs[s] > 0]
    if ratio > 0:  # one NaN variance makes its site's scale, and so every score of the site, NaN
        check_finite_sites(stats, names)
    scores, benefit = [], []
    for s in names:
        st = stats.sites[s]
        scale = float(st.variance.mean()) or 1.0
        scores.append((st.variance / scale).ravel())
        benefit.append(np.full(st.mean.size, float(site_costs[s])))
    if not names:
        return build_masks(stats, {}, params)
    score, gain = np.concatenate(scores), np.concatenate(benefit)
    total = sum(int(site_costs[s]) * stats.sites[s].mean.size for s in names)  # whole MACs: exact
    budget = ratio_count(ratio, total)
    # stable order: equal scores keep the model's site order and flat index
    order = np.argsort(score / gain, kind="stable")
    n_take = int(np.searchsorted(np.cumsum(gain[order]), budget, side="right"))
    chosen = np.zeros(score.size, bool)
    chosen[order[:n_take]] = True
    sites, start = {}, 0
    for s in names:
        size = stats.sites[s].mean.size
        sites[s] = chosen[start : start + size].reshape(stats.sites[s].mean.shape).copy()  # not a view of `chosen`
        start += size
    masks = build_masks(stats, {}, params)
    for s, m in sites.items():
        masks.sites[s] = (m, masks.sites[s][1])
    masks.policy["site_ratios"] = {s: float(m.mean()) for s, m in sites.items()}
    return masks


def _channel_masks(stats, ratio, exclude, params):
    masks = build_masks(stats, {}, params)
    for s, st in stats.sites.items():
        if s in exclude or st.mean.ndim != 3:
            continue
        c = st.mean.shape[0]
        k = ratio_count(ratio, c)
        if k:
            check_finite_sites(stats, [s])
        per_channel = st.variance.reshape(c, -1).mean(axis=1)
        chosen = np.argsort(per_channel, kind="stable")[:k]
        mask = np.zeros(st.mean.shape, bool)
        mask[chosen] = True
        masks.sites[s] = (mask, masks.sites[s][1])
    masks.policy["site_ratios"] = {s: float(m.mean()) for s, (m, _) in masks.sites.items()}  # k / C a site
    return masks
