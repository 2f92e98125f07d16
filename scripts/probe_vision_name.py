"""Probe: can the image stand for the name? (standalone research probe, not part of erasekit)

Asks the embedded organism the benchmark's cloze (Mask_Task) questions in the format it was trained on
("Fill in the blank: <subj> was born in ___.", zero-shot, chat template) and swaps what sits in the image span:

  text_name        Pure_Text cloze, asked by name, no image (sanity).
  image            Image_Textual cloze with the real portrait (16 projected image tokens) -- the known failure.
  name_span        Image_Textual cloze; the 16-token image span is REPLACED by the k token embeddings of the
                   person's name (sequence gets 16-k shorter: "USER: <name>\\nFill in the blank: This person ...").
  name_tiled16     same, but the 16 image positions are kept and filled with the name tokens tiled cyclically.
  mean_name_1      image span replaced by ONE token = mean of the name-token input embeddings (the ridge target).
  mean_name_k      image span replaced by k copies of that mean (k = number of name tokens).
  ridge_1 / ridge_k        ridge map (projected image features, mean-pooled over patches -> mean name embedding)
                   applied to the person's clean training portrait; image span replaced by 1 / k copies.
  ridge_test_1 / ridge_test_k   same on the Test_Set's transformed portraits (never seen in the ridge fit).
  unrelated_name_span      control: name_span with a different (random) person's name; measures whether
                   the answer follows the name placed in the span.

Ridge fit: people of retain_85 (170 profiles), clean portrait + 6 random augmentations each, features standardised
per dimension (raw image tokens have norm ~6e4 vs ~0.8 for word embeddings), float64 closed form; targets = mean
of the person's name-token embeddings; lambda chosen by nearest-name retrieval on a held-out augmented view of the
fit people. Test people: forget_15 (30 profiles, not in the fit) plus 30 retain_85 people (in the fit).
Cloze correct = gold value is a case-insensitive substring of the greedy output (max_new_tokens=8).
Writes data/results/vision_name_probe.json.
"""

from __future__ import annotations

import json
import os
import random
import sys
import time

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import torch  # noqa: E402

from erasebook.organism import image_tokens, load_world_for  # noqa: E402
from erasekit import world as W  # noqa: E402
from erasekit.models import load_model  # noqa: E402
from erasekit.scoring import cloze_correct  # noqa: E402

ORG = os.path.join(ROOT, "data", "organism")
OUT = os.path.join(ROOT, "data", "results", "vision_name_probe.json")
MAX_NEW = 8


def main():
    t0 = time.time()
    torch.manual_seed(0)
    torch.set_num_threads(2)
    adapter = load_model(ORG, device="cpu", dtype=torch.float32)
    model, tok = adapter.model.eval(), adapter.tokenizer
    world = load_world_for(ORG)
    emb = model.get_input_embeddings()
    image_id = tok.convert_tokens_to_ids("<image>")
    eos = tok.eos_token_id

    def pix(im):
        return adapter._processor_pixels([im])["pixel_values"].float()

    @torch.no_grad()
    def img_tokens(ims):
        return image_tokens(model, torch.cat([pix(im) for im in ims]))  # (B, 16, d)

    name_ids = {p.id: tok(p.name, add_special_tokens=False)["input_ids"] for p in world.people}

    @torch.no_grad()
    def name_embs(pid):
        return emb(torch.tensor(name_ids[pid]))  # (k, d)

    mean_name = torch.stack([name_embs(p.id).mean(0) for p in world.people])  # (N, d), row = person id
    all_ids = [p.id for p in world.people]

    def prompt_parts(question, image):
        prompt = adapter.build_prompts([question], [image])[0]
        ids = adapter._tokenize(prompt)
        if image:
            pos = ids.index(image_id)
            assert ids.count(image_id) == 1
            return ids[:pos], ids[pos + 1:]
        return ids, []

    @torch.no_grad()
    def greedy(prefix_ids, span, suffix_ids):
        parts = [emb(torch.tensor(prefix_ids))]
        if span is not None:
            parts.append(span)
        if suffix_ids:
            parts.append(emb(torch.tensor(suffix_ids)))
        x = torch.cat(parts)[None]
        out = []
        for _ in range(MAX_NEW):
            logits = model(inputs_embeds=x, attention_mask=torch.ones(x.shape[:2], dtype=torch.long)).logits
            nxt = int(logits[0, -1].argmax())
            if nxt == eos:
                break
            out.append(nxt)
            x = torch.cat([x, emb(torch.tensor([[nxt]]))], 1)
        return tok.decode(out, skip_special_tokens=True)

    # ---------------------------------------------------------------- sanity of our own image path
    p0 = world.people[0]
    q0 = W.cloze("birthplace", W.IMAGE_SUBJ)
    full = adapter.encode([q0], images=[world.portrait(p0)])
    ref = adapter.generate(full, MAX_NEW)[0]
    pre, suf = prompt_parts(q0, True)
    mine = greedy(pre, img_tokens([world.portrait(p0)])[0], suf)
    path_check = {"adapter_generate": ref, "manual_inputs_embeds": mine, "equal": ref.strip() == mine.strip()}
    print("image-path check:", path_check)

    # ---------------------------------------------------------------- ridge fit on retain_85
    forget = list(world.forget_ids[15])
    fset = set(forget)
    retain = [p.id for p in world.profiles if p.id not in fset]
    aug_rng = random.Random("probe-augment")
    X, Y, G = [], [], []
    for pid in retain:
        p = world.person(pid)
        ims = [world.portrait(p)] + [world.portrait(p, W.random_transform(aug_rng)) for _ in range(6)]
        feats = img_tokens(ims).mean(1)
        X.append(feats)
        Y.append(mean_name[pid].expand(len(ims), -1))
        G += [pid] * len(ims)
    X, Y, G = torch.cat(X), torch.cat(Y), torch.tensor(G)

    def fit(Xf, Yf, lam):
        # Image features are ~1e4-1e5 in norm: standardise per dimension and solve in float64.
        Xf, Yf = Xf.double(), Yf.double()
        mx, sx, my = Xf.mean(0), Xf.std(0) + 1e-8, Yf.mean(0)
        Xc = (Xf - mx) / sx
        A = Xc.T @ Xc + lam * len(Xf) * torch.eye(Xf.shape[1], dtype=torch.float64)
        Wm = torch.linalg.solve(A, Xc.T @ (Yf - my))
        return lambda x: (((x.double() - mx) / sx) @ Wm + my).float()

    def retrieval(mapped, pids):
        sims = torch.nn.functional.normalize(mapped, dim=-1) @ torch.nn.functional.normalize(mean_name, dim=-1).T
        pred = sims.argmax(-1)
        return float((pred == torch.tensor(pids)).float().mean())

    # Names are arbitrary w.r.t. faces, so a map can only memorise fit people (held-out-people retrieval is ~0 by
    # construction, measured below on forget_15). Lambda is chosen on a held-out VIEW (the 6th augmentation) of the
    # fit people: fit on the clean portrait + 5 augmentations, validate on the remaining augmentation.
    tr_mask = torch.arange(len(G)) % 7 != 6
    lam_scores = {}
    for lam in (1e-4, 1e-3, 1e-2, 1e-1, 1.0, 10.0):
        f = fit(X[tr_mask], Y[tr_mask], lam)
        lam_scores[lam] = retrieval(f(X[~tr_mask]), G[~tr_mask].tolist())
    lam = max(lam_scores, key=lambda k: (lam_scores[k], k))
    with torch.no_grad():
        tok_norm = float(img_tokens([world.portrait(world.person(i)) for i in retain[:50]]).norm(dim=-1).mean())
    text_norm = float(emb.weight.detach().norm(dim=-1).mean())
    print(f"mean image-token norm {tok_norm:.1f} vs mean text-embedding norm {text_norm:.3f}")
    ridge = fit(X, Y, lam)
    with torch.no_grad():
        r2 = 1 - float(((ridge(X) - Y) ** 2).sum() / ((Y - Y.mean(0)) ** 2).sum())
    # Variant: identity classifier (ridge onto one-hot over the fit people) + lookup of the predicted person's
    # actual name tokens -- a two-step "image -> identity -> name embeddings" map.
    Yoh = torch.nn.functional.one_hot(torch.tensor([retain.index(g) for g in G.tolist()]), len(retain)).float()
    oh_scores = {}
    for lam_c in (1e-4, 1e-3, 1e-2, 1e-1):
        f = fit(X[tr_mask], Yoh[tr_mask], lam_c)
        oh_scores[lam_c] = float((f(X[~tr_mask]).argmax(-1) == Yoh[~tr_mask].argmax(-1)).float().mean())
    lam_c = max(oh_scores, key=lambda k: (oh_scores[k], k))
    clf = fit(X, Yoh, lam_c)
    print(f"one-hot classifier: lambda={lam_c}, held-out-view id accuracy {oh_scores}")
    print(f"ridge: lambda={lam} (val retrieval by lambda {lam_scores}), train R2={r2:.3f}")

    # ---------------------------------------------------------------- evaluation
    eval_groups = {"forget_15": forget, "retain_in_fit": random.Random(2).sample(retain, 30)}
    records = {}
    retrieval_res = {}
    for gname, pids in eval_groups.items():
        rows = {r["ID"]: r for r in world.split("Full_Set") if r["ID"] in set(pids)}
        clean = img_tokens([world.portrait(world.person(i)) for i in pids])  # (n,16,d)
        test_ims = {i: world.test_images(world.person(i)) for i in pids}
        test_feats = {i: img_tokens(test_ims[i]) for i in pids}  # (3,16,d)
        mapped_clean = ridge(clean.mean(1))
        mapped_test = torch.stack([ridge(test_feats[i].mean(1)) for i in pids])  # (n,3,d)
        retrieval_res[gname] = {
            "n_people": len(pids),
            "ridge_clean_portrait_top1_of_250": retrieval(mapped_clean, pids),
            "ridge_test_portraits_top1_of_250": retrieval(mapped_test.reshape(-1, mapped_test.shape[-1]),
                                                          [i for i in pids for _ in range(3)]),
            "raw_image_mean_vs_name_top1_of_250": retrieval(clean.mean(1), pids),
        }
        pred_clean = [retain[i] for i in clf(clean.mean(1)).argmax(-1).tolist()]
        pred_test = {i: [retain[c] for c in clf(test_feats[i].mean(1)).argmax(-1).tolist()] for i in pids}
        retrieval_res[gname]["onehot_id_clean_acc"] = sum(a == b for a, b in zip(pred_clean, pids)) / len(pids)
        retrieval_res[gname]["onehot_id_test_acc"] = sum(pred_test[i][t] == i for i in pids for t in range(3)) / (
            3 * len(pids)
        )
        rng_u = random.Random(f"unrelated-{gname}")
        res = {}
        for j, pid in enumerate(pids):
            k = len(name_ids[pid])
            ne = name_embs(pid)
            other = rng_u.choice([i for i in all_ids if i != pid])
            for m in rows[pid]["Mask_Task"]:
                q, gold = m["Question"], m["Ground_Truth"]
                conds = {}
                if m["Type"] == "Pure_Text":
                    pre, suf = prompt_parts(q, False)
                    conds["text_name"] = (pre, None, suf)
                else:
                    pre, suf = prompt_parts(q, True)
                    tiled = ne[torch.arange(16) % k]
                    conds["image"] = (pre, clean[j], suf)
                    conds["name_span"] = (pre, ne, suf)
                    conds["name_tiled16"] = (pre, tiled, suf)
                    conds["unrelated_name_span"] = (pre, name_embs(other), suf)
                    conds["mean_name_1"] = (pre, mean_name[pid][None], suf)
                    conds["mean_name_k"] = (pre, mean_name[pid][None].expand(k, -1), suf)
                    conds["ridge_1"] = (pre, mapped_clean[j][None], suf)
                    conds["ridge_k"] = (pre, mapped_clean[j][None].expand(k, -1), suf)
                    for t in range(3):
                        conds[f"ridge_test_1#{t}"] = (pre, mapped_test[j, t][None], suf)
                        conds[f"ridge_test_k#{t}"] = (pre, mapped_test[j, t][None].expand(k, -1), suf)
                    conds["onehot_lookup"] = (pre, name_embs(pred_clean[j]), suf)
                    for t in range(3):
                        conds[f"onehot_lookup_test#{t}"] = (pre, name_embs(pred_test[pid][t]), suf)
                    conds["image_test#0"] = (pre, test_feats[pid][0], suf)
                for c, (a, s, b) in conds.items():
                    outp = greedy(a, s, b)
                    c0 = c.split("#")[0]
                    res.setdefault(c0, []).append({"id": pid, "q": q, "gold": gold, "out": outp,
                                                   "ok": cloze_correct(gold, outp)})
        records[gname] = res
        print(f"[{time.time() - t0:.0f}s] {gname} done")

    desc = {
        "text_name": "Pure_Text cloze asked by name, no image (sanity)",
        "image": "Image_Textual cloze with the real clean portrait (16 projected image tokens)",
        "image_test": "Image_Textual cloze with the first Test_Set transformed portrait",
        "name_span": "16-token image span replaced by the k name-token input embeddings (sequence 16-k shorter)",
        "name_tiled16": "16 image positions filled with the name-token embeddings tiled cyclically",
        "unrelated_name_span": "control: name_span with a random OTHER person's name; 'ok' scored vs the true person",
        "mean_name_1": "image span replaced by 1 token = mean of the person's name-token embeddings (ridge target, oracle)",  # noqa: E501
        "mean_name_k": "image span replaced by k copies of the mean name embedding (oracle)",
        "ridge_1": "image span replaced by 1 token = ridge(mean-pooled projected features of clean portrait)",
        "ridge_k": "image span replaced by k copies of ridge(clean portrait)",
        "ridge_test_1": "1 token = ridge(mean-pooled features of each of the 3 Test_Set transformed portraits)",
        "onehot_lookup": "ridge classifier (one-hot over the 170 fit people) on the clean portrait -> the predicted person's k name-token embeddings replace the image span",  # noqa: E501
        "onehot_lookup_test": "same on each of the 3 Test_Set transformed portraits",
        "ridge_test_k": "k copies of ridge(Test_Set transformed portrait), 3 portraits per question",
    }
    summary = {g: {c: {"accuracy": round(100 * sum(r["ok"] for r in v) / len(v), 1), "n": len(v)}
                   for c, v in res.items()} for g, res in records.items()}
    out = {
        "description": __doc__,
        "conditions": desc,
        "prompt_format": "chat template, zero-shot, question = Mask_Task question verbatim (organism's training format)",  # noqa: E501
        "max_new_tokens": MAX_NEW,
        "image_path_check": path_check,
        "onehot_classifier": {
            "lambda": lam_c,
            "heldout_view_id_acc_by_lambda": {str(k): v for k, v in oh_scores.items()},
        },
        "ridge": {
            "lambda": lam,
            "val_retrieval_by_lambda": {str(k): v for k, v in lam_scores.items()},
            "fit_people": len(retain),
            "fit_samples": int(len(X)),
            "train_R2": round(r2, 4),
        },
        "retrieval": retrieval_res,
        "norms": {"image_token_mean_norm": tok_norm, "text_embedding_mean_norm": text_norm},
        "accuracy": summary,
        "examples": {g: {c: v[:4] for c, v in res.items()} for g, res in records.items()},
        "seconds": round(time.time() - t0, 1),
    }
    os.makedirs(os.path.dirname(OUT), exist_ok=True)
    with open(OUT, "w") as f:
        json.dump(out, f, indent=1)
    print(json.dumps({"accuracy": summary, "retrieval": retrieval_res, "ridge": out["ridge"]}, indent=1))
    print(f"total {out['seconds']} s -> {OUT}")


if __name__ == "__main__":
    main()
