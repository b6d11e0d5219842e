"""Published numbers to print beside ours, with where they come from.

Only numbers read from their source are quoted; a metric the source has but that could not be
checked against a readable copy is None. Metric names are pinlab's (`map_all@10` is the MAP
column of Microsoft Recommenders, see `map_all_at_k`).
"""

from __future__ import annotations

from pinlab_eval.contracts import Anchor, ProtocolSpec

_MS_SOURCE = (
    "Microsoft Recommenders README, 'Algorithm Comparison' table: MovieLens 100k, "
    "python_stratified_split(ratio=0.75, filter_by='item', seed=42), top 10 with seen items "
    "removed, MAP dividing by all relevant items "
    "(https://github.com/recommenders-team/recommenders#algorithm-comparison)"
)
_MS_PROTOCOL = ProtocolSpec(name="stratified", ratio=0.75, stratify_by="item", seed=42)
_MS_NOTE = "their empirical hyperparameters from MyMediaLite, 15 epochs; not tuned per model"

_GSASREC_SOURCE = (
    "gSASRec-pytorch release (Petrov & Macdonald, RecSys 2023), README table of its "
    "pre-trained checkpoints (https://github.com/asash/gSASRec-pytorch)"
)
_GSASREC_NOTE = (
    "on SASRec's preprocessed ml-1m (items with fewer than 5 interactions removed, 3416 "
    "items), full ranking; with one target per user recall@k equals hr@k"
)

_SASREC_SOURCE = (
    "Kang & McAuley, Self-Attentive Sequential Recommendation, ICDM 2018, Table III "
    "(https://arxiv.org/abs/1808.09781)"
)
_SASREC_PROTOCOL = ProtocolSpec(name="leave-last-out", negatives=100, sampling="uniform")
_SASREC_NOTE = "the target ranked among 100 uniformly sampled items the user never touched"

_FULL_LLO = ProtocolSpec(name="leave-last-out")
_S3REC_NOTE = (
    "S3-Rec's preprocessing of the Amazon 5-core files, as ICLRec releases them (Beauty.txt, "
    "Toys_and_Games.txt); leave-last-out, full ranking over every item, the user's items excluded"
)
_AMAZON_SEQUENTIAL: tuple[tuple[str, str, str, str, tuple[float | None, ...]], ...] = (
    # dataset, model, source, extra note, (hr@5, ndcg@5, hr@10, ndcg@10, hr@20, ndcg@20)
    ("amazon-beauty", "ICLRec", "salesforce/ICLRec README.md, 'Evaluate Model' (its released "
     "checkpoint)", "", (0.0500, 0.0326, 0.0744, 0.0403, 0.1058, 0.0483)),
    ("amazon-toys", "ICLRec", "salesforce/ICLRec README.md, 'Evaluate Model' (its released "
     "checkpoint)", "", (0.0598, 0.0404, 0.0834, 0.0480, 0.1138, 0.0557)),
    ("amazon-beauty", "ICSRec", "QinHsiu/ICSRec README.md, 'Evaluate Model', SAS encoder "
     "(its released checkpoint; Qin et al., WSDM 2024)", "; a retraining in the repo's issue #3 "
     "fell short of it", (0.0698, 0.0494, 0.0959, 0.0578, 0.1298, 0.0663)),
    ("amazon-toys", "ICSRec", "QinHsiu/ICSRec README.md, 'Evaluate Model', SAS encoder "
     "(its released checkpoint; Qin et al., WSDM 2024)", "", (0.0788, 0.0571, 0.1055, 0.0657,
     0.1368, 0.0736)),
    ("amazon-beauty", "BSARec", "yehjin-shin/BSARec src/output/BSARec_Beauty_best.log, "
     "'Test Score' (Shin et al., AAAI 2024)", "; one seed", (0.0736, 0.0523, 0.1008, 0.0611,
     0.1373, 0.0703)),
    ("amazon-beauty", "SASRec, sampled softmax (256 negatives)", "blondered/transformer_benchmark "
     "README.md, 'Common academic benchmarks', SASRec+SS (the eSASRec paper, 2025)", "; users "
     "whose target is unseen in training are dropped (52 of 22,363)", (None, None, 0.0921,
     0.0531, None, None)),
    ("amazon-toys", "SASRec, sampled softmax (256 negatives)", "blondered/transformer_benchmark "
     "README.md, 'Common academic benchmarks', SASRec+SS (the eSASRec paper, 2025)", "; users "
     "whose target is unseen in training are dropped (47 of 19,412)", (None, None, 0.0970,
     0.0580, None, None)),
)  # fmt: skip
_CUTS = ("hr@5", "ndcg@5", "hr@10", "ndcg@10", "hr@20", "ndcg@20")

ANCHORS: tuple[Anchor, ...] = (
    *(
        Anchor(
            dataset="movielens-100k",
            protocol=_MS_PROTOCOL,
            model=model,
            metrics={
                "ndcg@10": ndcg,
                "precision@10": precision,
                "recall@10": recall,
                "map_all@10": map_all,
            },
            source=_MS_SOURCE,
            note=_MS_NOTE,
        )
        for model, map_all, ndcg, precision, recall in (
            ("BiVAE", 0.146126, 0.475077, 0.411771, 0.219145),
            ("BPR", 0.132478, 0.441997, 0.388229, 0.212522),
            ("LightGCN", 0.088526, 0.419846, 0.379626, 0.144336),
            ("NCF", 0.107720, 0.396118, 0.347296, 0.180775),
            ("SAR", 0.110591, 0.382461, 0.330753, 0.176385),
        )
    ),
    *(
        Anchor(
            dataset="movielens-1m",
            protocol=ProtocolSpec(name="leave-last-out"),
            model=model,
            metrics={
                "recall@1": recall_1,
                "recall@10": recall_10,
                "hr@10": recall_10,
                "ndcg@10": ndcg_10,
            },
            source=_GSASREC_SOURCE,
            note=_GSASREC_NOTE,
        )
        for model, recall_1, recall_10, ndcg_10 in (
            ("SASRec (BCE, 1 negative)", 0.0442, 0.2392, 0.1259),
            ("gSASRec (gBCE, t=0.75)", 0.0754, 0.3003, 0.1726),
        )
    ),
    Anchor(
        dataset="movielens-1m",
        protocol=ProtocolSpec(name="leave-last-out"),
        model="SASRec (RecBole)",
        metrics={"recall@10": 0.247},
        source="RecBole leaderboard for ml-1m, as quoted in pinlab issue 5",
        note="not re-checked against the leaderboard page; RecBole's own preprocessing",
    ),
    *(
        Anchor(
            dataset=dataset,
            protocol=_FULL_LLO,
            model=model,
            metrics={cut: v for cut, v in zip(_CUTS, values, strict=True) if v is not None},
            source=source,
            note=_S3REC_NOTE + note,
        )
        for dataset, model, source, note, values in _AMAZON_SEQUENTIAL
    ),
    *(
        Anchor(
            dataset=dataset,
            protocol=_SASREC_PROTOCOL,
            model="SASRec",
            metrics={"hr@10": hr, "ndcg@10": ndcg},
            source=_SASREC_SOURCE,
            note=_SASREC_NOTE + note,
        )
        for dataset, hr, ndcg, note in (
            ("amazon-beauty", 0.4854, 0.3219, ""),
            ("amazon-games", 0.7410, 0.5360, ""),
            ("steam", None, None, "; the paper reports Steam, values not checked here"),
            ("movielens-1m", 0.8245, 0.5905, ""),
        )
    ),
)


def anchors_for(dataset_name: str, protocol: ProtocolSpec | str) -> list[Anchor]:
    """The published numbers for this dataset under this protocol, in table order.

    Dataset names match loosely: case, punctuation, a `movielens`/`ml` or `amazon` prefix do
    not matter (`ml-100k`, `MovieLens 100K`, `movielens_100k`; `beauty`, `Amazon-Beauty`).
    Given a `ProtocolSpec`, every setting but the seed must match (full ranking and sampled
    negatives give incomparable numbers); given a protocol name, all its variants are returned.
    """
    key = _dataset_key(dataset_name)
    found = [anchor for anchor in ANCHORS if _dataset_key(anchor.dataset) == key]
    if isinstance(protocol, str):
        return [anchor for anchor in found if anchor.protocol.name == protocol]
    wanted = protocol.model_copy(update={"seed": 0})
    return [anchor for anchor in found if anchor.protocol.model_copy(update={"seed": 0}) == wanted]


def _dataset_key(name: str) -> str:
    key = "".join(c for c in name.lower() if c.isalnum())
    key = key.replace("movielens", "ml").removeprefix("amazon")
    return {"videogames": "games", "video": "games", "toysandgames": "toys"}.get(key, key)
