"""Why the planted `history` and the explanation targets are not met: can a randomly initialised T5 read an id in its text?

On the planted `history` data the next item is a fixed function of the last history item (a random successor
permutation over the catalogue), so the sequential task is a 400-entry lookup once the last item is found. This
probe trains a *plain* `T5ForConditionalGeneration` of a named shape (no user or task prompt: the text route
alone) on the prepared sequential training samples, with the source written five ways, and reports the share of
training and test samples whose target id it decodes exactly (teacher-forced argmax over all target pieces):

* `prompt`: the prepared sources as they are (the training templates; ids written `item_241,`);
* `recent_first`: the prepared sources with the history listed most recent first, so the key is the list's first
  id, right after the template's words, instead of its last;
* `spaced`: the whole history again, but each id written as the target writes it (`item 241 , item 97 ; next ?`),
  so an id's pieces in the input are the target's pieces;
* `last_item`: only the last history item, written `item_241` (the prompt's pieces for it);
* `last_id`: only the last history item, written `241` (exactly the target's pieces).

The gap between `last_*` (the lookup alone) and `prompt`/`spaced` (the lookup behind "find the last item of a
list") separates memorising the mapping from locating its key in the text.

`--task explanation` asks the same of the third task, whose answer needs one id only: on synthetic data an
explanation names one of its item's two features, so a model that reads the item id can name one, and one that
does not can only guess within the category (a third of the time). The probe trains on the prepared explanation
samples and reports the share of greedy explanations of training and test samples that name one of their item's
features (read from the training explanations), with the source written four ways:

* `prompt`: the prepared sources (`Describe item_12 from the point of view of user_1.`);
* `no_user`: the same with the user id written as words (`... of a user.`): one id among template words;
* `ids_only`: the two ids alone (`item_12 user_1`);
* `item_alone`: the item id alone (`item_12`).

Hand-written loop rather than `Trainer`: a few hundred lines of control experiment, one model, no prompts, no
checkpoints.

    python experiments/history_lookup_probe.py --prepared_dir prepared/synthetic-history-pmf512-n20 \\
        --output experiments/results/history-lookup-probe
    python experiments/history_lookup_probe.py --task explanation --prepared_dir prepared/synthetic-default-pmf64-n10 \\
        --max_steps 900 --output experiments/results/explanation-text-probe
"""

from __future__ import annotations

import argparse
import re
import sys
import time
from pathlib import Path

import numpy as np
import torch
from transformers import AutoTokenizer, T5Config, T5ForConditionalGeneration

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from configuration_peapod import NAMED_SHAPES
from datasets_scripts import load_prepared
from datasets_scripts.files import atomic_write_json, atomic_write_text
from training.evaluation.metrics.feature_share import feature_shares, item_features

SOURCE_FORMS = ("prompt", "recent_first", "spaced", "last_item", "last_id")
EXPLANATION_FORMS = ("prompt", "no_user", "ids_only", "item_alone")
HISTORY_LIST = re.compile(r"item_\d+(?:, item_\d+)*")
USER_ID = re.compile(r"user_\d+")


def rewrite_source(source: str, form: str) -> str:
    """The sequential source `source` written in `form` (see the module docstring)."""
    if form == "prompt":
        return source
    if form == "recent_first":  # the same prompt with its history listed most recent first
        return HISTORY_LIST.sub(lambda match: ", ".join(reversed(match.group(0).split(", "))), source, count=1)
    history = re.findall(r"item_(\d+)", source)
    if form == "spaced":
        return "history: " + " , ".join(f"item {item}" for item in history) + " ; next ?"
    return f"item_{history[-1]}" if form == "last_item" else history[-1]


def rewrite_explanation_source(source: str, item: int, user: int, form: str) -> str:
    """The explanation source `source` (about `item`, for `user`) written in `form` (see the module docstring)."""
    if form == "prompt":
        return source
    if form == "no_user":
        return USER_ID.sub("a user", source)
    return f"item_{item} user_{user}" if form == "ids_only" else f"item_{item}"


def encode_split(split, tokenizer, form: str, task: str = "sequential") -> list[tuple[list[int], list[int]]]:
    if task == "explanation":
        sources = [rewrite_explanation_source(source, item, user, form)
                   for source, item, user in zip(split["source"], split["item_id"], split["user_id"])]
    else:
        sources = [rewrite_source(source, form) for source in split["source"]]
    return list(zip(tokenizer(sources).input_ids, split["labels"]))


def batches(samples, batch_size: int, order):
    """(input_ids, attention_mask, labels) of `samples` in `order`, right-padded with T5's pad id 0 (labels: -100)."""
    for start in range(0, len(order), batch_size):
        rows = [samples[index] for index in order[start:start + batch_size]]
        source_length, target_length = max(len(s) for s, _ in rows), max(len(t) for _, t in rows)
        input_ids = torch.zeros(len(rows), source_length, dtype=torch.long)
        attention_mask = torch.zeros_like(input_ids)
        labels = torch.full((len(rows), target_length), -100, dtype=torch.long)
        for row, (source, target) in enumerate(rows):
            input_ids[row, :len(source)] = torch.tensor(source)
            attention_mask[row, :len(source)] = 1
            labels[row, :len(target)] = torch.tensor(target)
        yield input_ids, attention_mask, labels


@torch.no_grad()
def exact_match(model, samples) -> tuple[float, float]:
    """(share of samples whose every target piece is the argmax, mean per-token loss)."""
    model.eval()
    hits, losses = [], []
    for input_ids, attention_mask, labels in batches(samples, 128, np.arange(len(samples))):
        output = model(input_ids=input_ids, attention_mask=attention_mask, labels=labels)
        correct = (output.logits.argmax(-1) == labels) | (labels == -100)
        hits += correct.all(-1).tolist()
        losses.append(output.loss.item() * len(labels))
    model.train()
    return float(np.mean(hits)), float(np.sum(losses) / len(samples))


@torch.no_grad()
def feature_share(model, tokenizer, samples, items, features_of_item, max_new_tokens: int = 24) -> float:
    """Share of greedy explanations of `samples` (about `items`) naming one of their item's features (the
    evaluation's `item_feature_share`)."""
    model.eval()
    texts = []
    for input_ids, attention_mask, _ in batches(samples, 128, np.arange(len(samples))):
        texts += tokenizer.batch_decode(model.generate(input_ids=input_ids, attention_mask=attention_mask,
                                                       max_new_tokens=max_new_tokens), skip_special_tokens=True)
    model.train()
    return feature_shares(texts, items, [""] * len(texts), features_of_item)["item_feature_share"] or 0.0


def probe_model(tokenizer, shape: str, untied_embeddings: bool = False) -> T5ForConditionalGeneration:
    """A randomly initialised plain T5 of a named shape, in training mode (seed the caller's torch first)."""
    config = T5Config(vocab_size=len(tokenizer), dropout_rate=0.0, decoder_start_token_id=tokenizer.pad_token_id,
                      pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
                      tie_word_embeddings=not untied_embeddings, **NAMED_SHAPES[shape])
    model = T5ForConditionalGeneration(config).train()
    if untied_embeddings:
        # transformers 5.x ties T5's output layer to its embeddings whatever the config says: there
        # tie_word_embeddings=False only turns off the decoder-output scaling (T5 v1.1's other difference). T5 v1.1's
        # separate output layer is therefore made here, as a copy of the embeddings that trains on its own.
        model.lm_head.weight = torch.nn.Parameter(model.shared.weight.detach().clone())
    return model


def probe(form: str, prepared, tokenizer, args) -> dict:
    torch.manual_seed(args.seed)
    model = probe_model(tokenizer, args.shape, args.untied_embeddings)
    train_split, test_split = (prepared.dataset[f"{args.task}_{name}"] for name in ("train", "test"))
    train = encode_split(train_split, tokenizer, form, args.task)
    test = encode_split(test_split, tokenizer, form, args.task)
    if args.task == "explanation":  # each item's features, as its training explanations name them
        features_of_item = item_features(train_split["item_id"], train_split["feature"])
        # the training share on as many samples as the test split has, so both cost the same
        train_items, test_items = train_split["item_id"][:len(test)], test_split["item_id"]

    def measure() -> dict:
        if args.task == "explanation":
            return {"train_share": feature_share(model, tokenizer, train[:len(test)], train_items, features_of_item),
                    "test_share": feature_share(model, tokenizer, test, test_items, features_of_item),
                    "test_loss": exact_match(model, test)[1]}
        (train_exact, train_loss), (test_exact, test_loss) = exact_match(model, train), exact_match(model, test)
        return {"train_exact": train_exact, "train_loss": train_loss, "test_exact": test_exact, "test_loss": test_loss}

    optimizer = torch.optim.AdamW(model.parameters(), lr=args.learning_rate)
    rng, step, points, started = np.random.default_rng(args.seed), 0, [], time.perf_counter()
    while step < args.max_steps:
        for input_ids, attention_mask, labels in batches(train, args.batch_size, rng.permutation(len(train))):
            loss = model(input_ids=input_ids, attention_mask=attention_mask, labels=labels).loss
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            step += 1
            if step % args.eval_every == 0 or step == args.max_steps:
                points.append({"step": step, **measure()})
                print(f"{form} step {step}: " + ", ".join(f"{key} {value:.3f}" for key, value in points[-1].items()
                                                         if key != "step"), flush=True)
            if step == args.max_steps:
                break
    example = tokenizer.convert_ids_to_tokens(test[0][0])
    return {"form": form, "example_source_pieces": example, "points": points,
            "train_seconds": round(time.perf_counter() - started, 1)}


def markdown(results: list[dict], task: str = "sequential") -> str:
    score = "share" if task == "explanation" else "exact"
    steps = [point["step"] for point in results[0]["points"]]
    lines = ["| source form | " + " | ".join(f"test {score} @ {step}" for step in steps) + f" | train {score} (last) |",
             "|---|" + "---|" * (len(steps) + 1)]
    for result in results:
        cells = [f"{point[f'test_{score}']:.3f}" for point in result["points"]]
        lines.append(f"| `{result['form']}` | " + " | ".join(cells) + f" | {result['points'][-1][f'train_{score}']:.3f} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--prepared_dir", default="prepared/synthetic-history-pmf512-n20")
    parser.add_argument("--tokenizer", default="../shared/tokenizers/t5")
    parser.add_argument("--task", default="sequential", choices=("sequential", "explanation"))
    parser.add_argument("--forms", nargs="+", choices=sorted(set(SOURCE_FORMS + EXPLANATION_FORMS)),
                        help="default: every form of --task")
    parser.add_argument("--shape", default="tiny", choices=list(NAMED_SHAPES))
    parser.add_argument("--max_steps", type=int, default=1800)
    parser.add_argument("--eval_every", type=int, default=300)
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--learning_rate", type=float, default=5e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--untied_embeddings", action="store_true",
                        help="a separate output layer, unscaled decoder outputs (T5 v1.1's choice; t5-small ties and scales)")
    parser.add_argument("--output", default="experiments/results/history-lookup-probe")
    args = parser.parse_args(argv)
    if not Path(args.prepared_dir, "dataset").is_dir():
        parser.error(f"--prepared_dir {args.prepared_dir}: no prepared folder (run peapod-prepare first)")
    task_forms = EXPLANATION_FORMS if args.task == "explanation" else SOURCE_FORMS
    args.forms = args.forms or list(task_forms)
    if set(args.forms) - set(task_forms):
        parser.error(f"--forms {' '.join(sorted(set(args.forms) - set(task_forms)))}: not a form of --task {args.task} "
                     f"(its forms: {', '.join(task_forms)})")
    prepared = load_prepared(args.prepared_dir)
    if f"{args.task}_train" not in prepared.dataset:
        parser.error(f"--prepared_dir {args.prepared_dir}: no {args.task} samples (prepared without that task)")
    tokenizer = AutoTokenizer.from_pretrained(args.tokenizer)
    results = [probe(form, prepared, tokenizer, args) for form in args.forms]
    output = Path(args.output)
    output.mkdir(parents=True, exist_ok=True)
    settings = {key: value for key, value in vars(args).items() if key != "output"}
    atomic_write_json(output / "probe.json", {"settings": settings, "results": results})
    atomic_write_text(output / "probe.md", markdown(results, args.task))
    print(markdown(results, args.task))
    return 0


if __name__ == "__main__":
    sys.exit(main())
