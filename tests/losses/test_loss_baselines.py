"""KD, hints, RKD, ICL, CLIP and DCD against slow references written with Python loops."""

import math

import pytest
import torch

from dsmd.losses.baselines import hint_loss, kd_loss, rkd_loss
from dsmd.losses.contrastive_baselines import clip_loss, dcd_loss, interactive_contrastive_loss


def features(b, d, seed, normalise=True):
    generator = torch.Generator().manual_seed(seed)
    feats = [torch.randn(b, d, generator=generator, dtype=torch.float64) for _ in range(4)]
    if normalise:
        feats = [x / x.norm(dim=-1, keepdim=True) for x in feats]
    return feats


def lists(feats):
    return [f.tolist() for f in feats]


def dot(u, v):
    return sum(a * b for a, b in zip(u, v, strict=True))


def logits(a, b, tau):
    return [[dot(a[i], b[j]) / tau for j in range(len(b))] for i in range(len(a))]


def transpose(m):
    return [[m[i][j] for i in range(len(m))] for j in range(len(m[0]))]


def log_softmax(xs):
    top = max(xs)
    lse = top + math.log(sum(math.exp(x - top) for x in xs))
    return [x - lse for x in xs]


def smooth_l1(a, b):
    gap = abs(a - b)
    return 0.5 * gap * gap if gap < 1.0 else gap - 0.5


# Ids with repeated images (captions of one image), and without.
IDS = {
    1: ([0], [0]),
    2: ([4, 9], [4, 4]),
    5: ([0, 1, 2, 3, 4], [3, 7, 3, 9, 7]),
    8: ([0, 1, 2, 3, 4, 5, 6, 7], [3, 7, 3, 9, 7, 3, 11, 12]),
}
CASES = [(b, d, seed) for b in (1, 2, 5, 8) for d in (3, 16) for seed in (0, 1)]


# ---------------------------------------------------------------- references


def reference_kd(s_img, s_txt, t_img, t_txt, tau):
    p, q = logits(s_img, s_txt, tau), logits(t_img, t_txt, tau)
    total = 0.0
    for student, teacher in ((p, q), (transpose(p), transpose(q))):
        acc = 0.0
        for row_s, row_t in zip(student, teacher, strict=True):
            log_q, log_p = log_softmax(row_s), log_softmax(row_t)
            acc += sum(math.exp(lp) * (lp - lq) for lp, lq in zip(log_p, log_q, strict=True))
        total += acc / len(student)
    return 0.5 * total


def reference_hint(s_img, s_txt, t_img, t_txt):
    total = 0.0
    for s, t in ((s_img, t_img), (s_txt, t_txt)):
        acc = 0.0
        for n in range(len(s)):
            for d in range(len(s[0])):
                acc += (s[n][d] - t[n][d]) ** 2
        total += acc / (len(s) * len(s[0]))
    return total


def reference_relations(x):
    size = len(x)
    dist = [
        [math.sqrt(sum((a - b) ** 2 for a, b in zip(x[i], x[j], strict=True))) for j in range(size)]
        for i in range(size)
    ]
    positives = [dist[i][j] for i in range(size) for j in range(size) if dist[i][j] > 0]
    if positives:
        mean = sum(positives) / len(positives)
        dist = [[v / mean for v in row] for row in dist]
    units = []  # units[j][i] = (x_i - x_j) / |x_i - x_j|, or 0
    for j in range(size):
        row = []
        for i in range(size):
            diff = [a - b for a, b in zip(x[i], x[j], strict=True)]
            norm = math.sqrt(sum(v * v for v in diff))
            row.append([v / norm for v in diff] if norm > 0 else [0.0] * len(diff))
        units.append(row)
    angle = [[[dot(units[j][i], units[j][k]) for k in range(size)] for i in range(size)] for j in range(size)]
    return dist, angle


def reference_rkd(s_img, s_txt, t_img, t_txt, wd=1.0, wa=2.0):
    total = 0.0
    for s, t in ((s_img, t_img), (s_txt, t_txt)):
        size = len(s)
        ds, a_s = reference_relations(s)
        dt, a_t = reference_relations(t)
        distance = sum(smooth_l1(ds[i][j], dt[i][j]) for i in range(size) for j in range(size)) / size**2
        angle = 0.0
        for j in range(size):
            for i in range(size):
                for k in range(size):
                    angle += smooth_l1(a_s[j][i][k], a_t[j][i][k])
        total += wd * distance + wa * angle / size**3
    return total


def reference_ce_rows(m, ids):
    total = 0.0
    for n in range(len(m)):
        denominator = 0.0
        for j in range(len(m)):
            if j != n and ids[j] == ids[n]:
                continue  # another caption of the same image: removed
            denominator += math.exp(m[n][j])
        total += -math.log(math.exp(m[n][n]) / denominator)
    return total / len(m)


def reference_icl(s_img, s_txt, t_img, t_txt, ids, tau):
    return 0.5 * (reference_ce_rows(logits(s_img, t_txt, tau), ids) + reference_ce_rows(logits(s_txt, t_img, tau), ids))


def reference_clip(s_img, s_txt, ids, tau):
    return 0.5 * (reference_ce_rows(logits(s_img, s_txt, tau), ids) + reference_ce_rows(logits(s_txt, s_img, tau), ids))


def reference_dcd_direction(p, q, ids, negatives):
    total = 0.0
    for n in range(len(p)):
        others = [j for j in range(len(p)) if ids[j] != ids[n]]
        hardest = sorted(others, key=lambda j: -q[n][j])[:negatives]
        cand = [n, *hardest]
        log_pt = log_softmax([q[n][j] for j in cand])
        log_ps = log_softmax([p[n][j] for j in cand])
        kl = sum(math.exp(a) * (a - b) for a, b in zip(log_pt, log_ps, strict=True))
        w = math.exp(log_pt[0])
        total += w * kl + (1 - w) * -log_ps[0]
    return total / len(p)


def reference_dcd(s_img, s_txt, t_img, t_txt, ids, tau, negatives):
    p, q = logits(s_img, s_txt, tau), logits(t_img, t_txt, tau)
    forward = reference_dcd_direction(p, q, ids, negatives)
    backward = reference_dcd_direction(transpose(p), transpose(q), ids, negatives)
    return 0.5 * (forward + backward)


def close(got, want):
    assert got.dim() == 0
    assert got.item() == pytest.approx(want, rel=1e-10, abs=1e-12)


# ---------------------------------------------------------------- against the references


@pytest.mark.parametrize(("b", "d", "seed"), CASES)
@pytest.mark.parametrize("tau", [0.05, 0.5])
def test_kd_matches_reference(b, d, seed, tau):
    feats = features(b, d, seed)
    close(kd_loss(*feats, temperature=tau), reference_kd(*lists(feats), tau))


@pytest.mark.parametrize(("b", "d", "seed"), CASES)
@pytest.mark.parametrize("normalise", [True, False])
def test_hint_matches_reference(b, d, seed, normalise):
    feats = features(b, d, seed, normalise)
    close(hint_loss(*feats), reference_hint(*lists(feats)))


@pytest.mark.parametrize(("b", "d", "seed"), CASES)
@pytest.mark.parametrize("normalise", [True, False])
def test_rkd_matches_reference(b, d, seed, normalise):
    feats = features(b, d, seed, normalise)
    close(rkd_loss(*feats), reference_rkd(*lists(feats)))
    close(rkd_loss(*feats, distance_weight=0.3, angle_weight=0.0), reference_rkd(*lists(feats), 0.3, 0.0))


def test_rkd_handles_coinciding_rows():
    s_img, s_txt, t_img, t_txt = features(5, 4, seed=7)
    s_img = s_img.clone()
    s_img[3] = s_img[1]  # two coinciding student rows: a zero distance off the diagonal
    t_txt = t_txt[:1].expand(5, 4).clone()  # all teacher rows equal: no positive distance
    feats = [s_img, s_txt, t_img, t_txt]
    close(rkd_loss(*feats), reference_rkd(*lists(feats)))
    student = [s_img.clone().requires_grad_(True), t_txt.clone().requires_grad_(True)]
    rkd_loss(student[0], student[1], t_img, s_txt).backward()
    assert all(torch.isfinite(x.grad).all() for x in student)


@pytest.mark.parametrize(("b", "d", "seed"), CASES)
@pytest.mark.parametrize("repeated", [False, True])
def test_icl_and_clip_match_reference(b, d, seed, repeated):
    feats = features(b, d, seed)
    ids = IDS[b][repeated]
    tau = 0.07
    got = interactive_contrastive_loss(*feats, torch.tensor(ids), temperature=tau)
    close(got, reference_icl(*lists(feats), ids, tau))
    close(
        clip_loss(feats[0], feats[1], torch.tensor(ids), temperature=tau), reference_clip(*lists(feats[:2]), ids, tau)
    )


@pytest.mark.parametrize(("b", "d", "seed"), CASES)
@pytest.mark.parametrize("repeated", [False, True])
@pytest.mark.parametrize("negatives", [0, 1, 3, 8])
def test_dcd_matches_reference(b, d, seed, repeated, negatives):
    feats = features(b, d, seed)
    ids = IDS[b][repeated]
    got = dcd_loss(*feats, torch.tensor(ids), temperature=0.1, negatives=negatives)
    close(got, reference_dcd(*lists(feats), ids, 0.1, negatives))


# ---------------------------------------------------------------- properties


def test_identical_features_give_zero():
    s_img, s_txt, _, _ = features(6, 5, seed=3)
    assert kd_loss(s_img, s_txt, s_img, s_txt).item() == 0.0
    assert hint_loss(s_img, s_txt, s_img, s_txt).item() == 0.0
    assert rkd_loss(s_img, s_txt, s_img, s_txt).item() == 0.0
    # ICL against itself is the student's CLIP loss (not 0).
    ids = torch.tensor([0, 1, 0, 2, 3, 1])
    icl = interactive_contrastive_loss(s_img, s_txt, s_img, s_txt, ids)
    assert icl.item() == pytest.approx(clip_loss(s_img, s_txt, ids).item(), rel=1e-12)


def test_positive_alone_gives_zero():
    feats = features(4, 5, seed=4)
    same = torch.tensor([2, 2, 2, 2])  # every pair shows one image: no negative anywhere
    assert dcd_loss(*feats, same).item() == 0.0
    assert clip_loss(feats[0], feats[1], same).item() == 0.0
    assert interactive_contrastive_loss(*feats, same).item() == 0.0
    assert dcd_loss(*feats, torch.arange(4), negatives=0).item() == 0.0


def test_dcd_is_stable_at_small_temperature():
    feats = [f.clone().requires_grad_(i < 2) for i, f in enumerate(features(8, 16, seed=5))]
    loss = dcd_loss(*feats, torch.tensor(IDS[8][1]), temperature=1e-4, negatives=3)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(feats[0].grad).all() and torch.isfinite(feats[1].grad).all()


def call(name, feats, ids, **kwargs):
    if name == "kd":
        return kd_loss(*feats, **kwargs)
    if name == "hint":
        return hint_loss(*feats, **kwargs)
    if name == "rkd":
        return rkd_loss(*feats, **kwargs)
    if name == "icl":
        return interactive_contrastive_loss(*feats, ids, **kwargs)
    if name == "clip":
        return clip_loss(feats[0], feats[1], ids, **kwargs)
    return dcd_loss(*feats, ids, **kwargs)


NAMES = ["kd", "hint", "rkd", "icl", "clip", "dcd"]


@pytest.mark.parametrize("name", NAMES)
def test_gradient_reaches_student_only(name):
    feats = [f.clone().requires_grad_(True) for f in features(6, 5, seed=6)]
    call(name, feats, torch.tensor([0, 1, 0, 2, 3, 1])).backward()
    assert feats[0].grad is not None and feats[0].grad.abs().sum() > 0
    assert feats[1].grad is not None and feats[1].grad.abs().sum() > 0
    assert feats[2].grad is None and feats[3].grad is None


@pytest.mark.parametrize("normalise", [True, False])
def test_rkd_gradcheck(normalise):
    s_img, s_txt, t_img, t_txt = features(4, 3, seed=8, normalise=normalise)
    student = (s_img.clone().requires_grad_(True), s_txt.clone().requires_grad_(True))
    assert torch.autograd.gradcheck(lambda a, b: rkd_loss(a, b, t_img, t_txt), student)


@pytest.mark.parametrize("ids", [[0, 1, 2, 3, 4], [0, 1, 0, 1, 0]])
@pytest.mark.parametrize("negatives", [2, 8])
def test_dcd_gradcheck(ids, negatives):
    s_img, s_txt, t_img, t_txt = features(5, 3, seed=9)
    student = (s_img.clone().requires_grad_(True), s_txt.clone().requires_grad_(True))
    ids = torch.tensor(ids)
    assert torch.autograd.gradcheck(lambda a, b: dcd_loss(a, b, t_img, t_txt, ids, 0.2, negatives), student)


@pytest.mark.parametrize("name", ["kd", "icl", "clip", "dcd"])
@pytest.mark.parametrize("tau", [0.0, -0.1, float("nan")])
def test_bad_temperature_is_rejected(name, tau):
    with pytest.raises(ValueError, match="temperature"):
        call(name, features(3, 4, seed=10), torch.arange(3), temperature=tau)


@pytest.mark.parametrize("negatives", [-1, 1.5, True])
def test_bad_negatives_are_rejected(negatives):
    with pytest.raises(ValueError, match="negatives"):
        dcd_loss(*features(3, 4, seed=11), torch.arange(3), negatives=negatives)


@pytest.mark.parametrize(("weights", "bad"), [((-1.0, 2.0), "distance_weight"), ((1.0, float("inf")), "angle_weight")])
def test_bad_rkd_weights_are_rejected(weights, bad):
    with pytest.raises(ValueError, match=bad):
        rkd_loss(*features(3, 4, seed=12), distance_weight=weights[0], angle_weight=weights[1])


@pytest.mark.parametrize("name", NAMES)
def test_shape_mismatch_is_rejected(name):
    s_img, s_txt, t_img, t_txt = features(5, 4, seed=13)
    ids = torch.arange(5)
    with pytest.raises(ValueError, match="shape"):
        call(name, [s_img, s_txt[:3], t_img, t_txt], ids)
    with pytest.raises(ValueError, match="shape"):
        call(name, [s_img, s_txt[:, :2], t_img, t_txt], ids)
    if name != "clip":
        with pytest.raises(ValueError, match="shape"):
            call(name, [s_img, s_txt, t_img[:, :2], t_txt[:, :2]], ids)
    with pytest.raises(ValueError, match=r"\(B, D\)"):
        call(name, [s_img[0], s_txt, t_img, t_txt], ids)
    if name in ("icl", "clip", "dcd"):
        with pytest.raises(ValueError, match="image_ids"):
            call(name, [s_img, s_txt, t_img, t_txt], ids[:4])
