"""Where is a forget fact readable in a prompt of a form no fit saw? (the organism, forget 5 %, layers 1-4)

For each held-out form family F: every fit below uses the forget facts and the first 40 ``fit`` retain profiles
rendered in the OTHER families (erasekit.forms); scored: the forget facts and 20 held-out retain people (``eval``)
in F, text prompts. Per layer, the held-out AUC (forget vs retain) of

* ``last_token``: erasekit's contrastive gate fitted and read at the prompt's last token (today's reading);
* ``max_pooled``: a gate fitted on subject tokens against the retain subject tokens plus 4,000 sampled other
  positions, read as the max over the prompt's positions;
* ``at_subject``: a gate fitted on subject tokens only (forget vs retain), read at the subject's last token (an
  oracle position);
* ``located``: the same gate read where a linear probe (erasekit.locate.fit_locator, fitted on the fit prompts'
  positions) puts the subject; ``located_hit``: share of prompts where that is the subject's last token.

    python scripts/gate_positions.py [family ...]   # default: context indirect cloze completion choice
Writes data/results/gate_positions.json (about 10 minutes on 2 CPU cores).
"""

import json
import sys

import torch
from sklearn.metrics import roc_auc_score

import erasebook as eb
from erasebook import paths, recipes
from erasebook.form_transfer import organism_form_facts
from erasekit.files import atomic_write
from erasekit.forms import render
from erasekit.gates import fit_gate
from erasekit.locate import fit_locator, subject_index, token_states

LAYERS = [1, 2, 3, 4]
FIT_FAMILIES = ["question", "paraphrase", "cloze", "completion", "choice", "context", "indirect"]


def states(adapter, facts, families, pool):
    ps = [p for p in render(facts, families, pool=pool) if p.image is None]
    texts = [p.text for p in ps]
    H, off = token_states(adapter, texts, None, LAYERS, batch_size=32)
    ends = [off[i + 1] - 1 - subject_index(adapter, t, p.fact.subject) for i, (p, t) in enumerate(zip(ps, texts))]
    return H, off, ends


def main(heldout) -> None:
    torch.set_num_threads(1)
    session = eb.load_session()
    direction = recipes.gate_setup(session).directions["default"]
    facts = organism_form_facts(session, 5, 20)
    pool = [f for v in facts.values() for f in v]
    retain_fit = facts["retain"][: 8 * 40]
    record = {"layers": LAYERS, "n_forget_facts": len(facts["forget"]), "n_retain_fit_facts": len(retain_fit),
              "n_scored_retain_facts": len(facts["retain_scored"]), "families": {}}
    for ho in heldout:
        fit = [f for f in FIT_FAMILIES if f != ho]
        Hf, of, ef = states(session.adapter, facts["forget"], fit, pool)
        Hr, orr, er = states(session.adapter, retain_fit, fit, pool)
        Ef, oef, eef = states(session.adapter, facts["forget"], [ho], pool)
        Er, oer, eer = states(session.adapter, facts["retain_scored"], [ho], pool)
        y = [1] * (len(oef) - 1) + [0] * (len(oer) - 1)
        out = {}
        for l in LAYERS:
            d = direction[l]

            def last(H, o):
                return H[l][torch.tensor(o[1:]) - 1]

            def at(H, ends):
                return H[l][torch.tensor(ends)]

            def auc(gate, a, b):
                return round(float(roc_auc_score(y, torch.cat([gate.gate_value(a), gate.gate_value(b)]).numpy())), 3)

            g_last = fit_gate(last(Hf, of), last(Hr, orr), d, "contrastive", 1e-3, "relative")
            gen = torch.Generator().manual_seed(0)
            others = torch.cat([Hf[l][torch.randint(0, Hf[l].shape[0], (2000,), generator=gen)],
                                Hr[l][torch.randint(0, Hr[l].shape[0], (2000,), generator=gen)]])
            g_max = fit_gate(at(Hf, ef), torch.cat([at(Hr, er), others]), d, "contrastive", 1e-3, "relative")

            def pooled(H, o):
                v = g_max.gate_value(H[l])
                return torch.stack([v[o[i]:o[i + 1]].max() for i in range(len(o) - 1)])

            g_subj = fit_gate(at(Hf, ef), at(Hr, er), d, "contrastive", 1e-3, "relative")
            X = torch.cat([Hf[l], Hr[l]])
            lab = torch.zeros(X.shape[0], dtype=torch.bool)
            lab[torch.tensor(ef)] = True
            lab[Hf[l].shape[0] + torch.tensor(er)] = True
            loc = fit_locator(X, lab)

            def located(H, o):
                idx = [o[i] + int(loc.scores(H[l][o[i]:o[i + 1]]).argmax()) for i in range(len(o) - 1)]
                return H[l][torch.tensor(idx)], idx

            (Lf, idf), (Lr, idr) = located(Ef, oef), located(Er, oer)
            hits = sum(a == b for a, b in zip(idf + idr, eef + eer))
            out[str(l)] = {
                "last_token": auc(g_last, last(Ef, oef), last(Er, oer)),
                "max_pooled": round(float(roc_auc_score(y, torch.cat([pooled(Ef, oef), pooled(Er, oer)]).numpy())), 3),
                "at_subject": auc(g_subj, at(Ef, eef), at(Er, eer)),
                "located": auc(g_subj, Lf, Lr),
                "located_hit": round(hits / (len(idf) + len(idr)), 3)}
            print(ho, l, out[str(l)], flush=True)
        record["families"][ho] = out
    atomic_write(paths.data_dir() / "results" / "gate_positions.json", json.dumps(record, indent=1) + "\n")


if __name__ == "__main__":
    main(sys.argv[1:] or ["context", "indirect", "cloze", "completion", "choice"])
