"""PeaPOD model configuration: a T5 configuration plus the collaborative-prompt and task-prompt fields.

This file travels to a Hub repository as remote code beside `modeling_peapod.py`; it imports only transformers.
Symbols follow the paper (Ramos, Wu, Lipani 2025, §4): d_u, n (`num_neighbors`), H, L_p, L_t.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Literal, get_args

from transformers import AutoConfig, T5Config

# The choice fields of PeaPODConfig: the Literal types are what argument parsers read (HfArgumentParser turns them
# into choices); the tuples are their values, for checks and messages.
PromptEncoder = Literal["mha", "mlp", "none"]
UserEmbeddingNorm = Literal["none", "l2", "layernorm"]
CollaborativePromptNorm = Literal["none", "rms"]
PromptAttentionNorm = Literal["none", "qk"]
LossReduction = Literal["sequence", "token"]
PROMPT_ENCODERS: tuple[str, ...] = get_args(PromptEncoder)
USER_EMBEDDING_NORMS: tuple[str, ...] = get_args(UserEmbeddingNorm)
COLLABORATIVE_PROMPT_NORMS: tuple[str, ...] = get_args(CollaborativePromptNorm)
PROMPT_ATTENTION_NORMS: tuple[str, ...] = get_args(PromptAttentionNorm)
LOSS_REDUCTIONS: tuple[str, ...] = get_args(LossReduction)


# Shapes for offline work, where no pretrained T5 weights exist: the model is randomly initialised with one of
# these and the genuine T5 vocabulary. "t5-small" is t5-small's exact shape; the others are CPU-sized.
NAMED_SHAPES: dict[str, dict[str, int]] = {
    "t5-small": {"d_model": 512, "d_kv": 64, "d_ff": 2048, "num_layers": 6, "num_heads": 8},
    "mini": {"d_model": 256, "d_kv": 64, "d_ff": 1024, "num_layers": 4, "num_heads": 4},
    "tiny": {"d_model": 64, "d_kv": 16, "d_ff": 128, "num_layers": 2, "num_heads": 4},
}


class PeaPODInputError(ValueError):
    """A user's mistake (a bad file, flag, checkpoint or argument), as opposed to a bug of ours.

    The message names the file, line, flag or value and what was expected. The console scripts turn it into a
    one-line `<prog>: error: ...` and exit status 2; any other exception is a bug and keeps its traceback.
    It subclasses `ValueError` so existing `except ValueError` callers keep working.
    """


# The task registry ------------------------------------------------------------------------------------------------
# One place for what a task is. It lives here, in remote code, because a model on the Hub (and a pipeline built on
# it) must be able to write a task's prompt and read its task id without the installable package. The training
# templates (datasets_scripts/templates.py) are keyed by these names; the collator, trainer, evaluation and CLIs read
# the registry. A task's id is its position in `config.tasks`, which must follow the data's order (check_task_order).


@dataclass(frozen=True)
class TaskSpec:
    """One task: its name, the plain prompt template used for validation and test, and what its target is.

    name: the task's name; the prepared data's splits are `{name}_{split}`.
    eval_template: the plain prompt (placeholders `{user}`, `{history}`, `{candidates}`, `{item}`).
    target: `"item"` (the target is an item id: ranked, HR/NDCG) or `"text"` (a sentence: BLEU/ROUGE).
    metrics: the shipped `evaluate` metrics that score it (training/evaluation/metrics/<name>).
    """

    name: str
    eval_template: str
    target: Literal["item", "text"]
    metrics: tuple[str, ...]

    @property
    def has_history(self) -> bool:
        """The prompt holds a purchase history: a too-long prompt may lose its oldest items (cut from the left)."""
        return "{history}" in self.eval_template

    @property
    def ranks_candidates(self) -> bool:
        """The prompt lists candidate items: the target is ranked among them, not over the whole catalogue."""
        return "{candidates}" in self.eval_template


TASK_REGISTRY: Mapping[str, TaskSpec] = MappingProxyType({spec.name: spec for spec in (
    TaskSpec("sequential", "Given the purchase history of user_{user}: {history}, predict the next item.",
             target="item", metrics=("ranking",)),
    TaskSpec("topn", "Recommend one item to user_{user} from the candidates: {candidates}",
             target="item", metrics=("ranking",)),
    TaskSpec("explanation", "Generate an explanation for user_{user} about item_{item}.",
             target="text", metrics=("bleu_nmt", "rouge_f1")),
)})
DEFAULT_TASKS: tuple[str, ...] = tuple(TASK_REGISTRY)  # the prepared data's order: task_id = index


def task_spec(name: str) -> TaskSpec:
    """The registry entry of task `name` (PeaPODInputError naming the known tasks otherwise)."""
    if name not in TASK_REGISTRY:
        raise PeaPODInputError(f"unknown task {name!r}; the task registry has {list(TASK_REGISTRY)}")
    return TASK_REGISTRY[name]


def check_task_order(model_tasks: Sequence[str], data_task_ids: Mapping[str, int], model: str, data: str) -> None:
    """Refuse a model whose task order differs from the data's: task ids index `config.tasks`, so a reordered list
    would silently feed every sample the prompt of another task.

    `data_task_ids` is {task name: the task_id the data's rows carry}; every one must sit at that index of
    `model_tasks`. `model` and `data` name the two sides in the message (e.g. a checkpoint path, a folder).
    """
    model_tasks = list(model_tasks)
    wrong = {name: task_id for name, task_id in data_task_ids.items()
             if not (0 <= task_id < len(model_tasks) and model_tasks[task_id] == name)}
    if wrong:
        data_order = [None] * (max(data_task_ids.values(), default=-1) + 1)
        for name, task_id in data_task_ids.items():
            data_order[task_id] = name
        raise PeaPODInputError(
            f"task order mismatch: {model} has tasks {model_tasks} (task_id = index) but {data} numbers its tasks "
            f"{data_order}; task {', '.join(f'{name!r} is id {task_id}' for name, task_id in wrong.items())} in "
            "the data. Use a config whose `tasks` follow the data's order"
        )


class PeaPODConfig(T5Config):
    r"""
    Configuration of [`PeaPODForConditionalGeneration`]: every field of [`T5Config`] plus the following.

    num_users (`int`, defaults to 0):
        Number of known users; user ids run 1..num_users and id 0 is the unknown user. The frozen user tables have
        `num_users + 1` rows. 0 means "no user table yet": a collaborative prompt then needs one installed first.
    num_items (`int`, defaults to 0):
        Number of catalogue items (ids 1..num_items); constrained decoding builds its item-id trie over them.
        0 = not recorded (then pass the catalogue explicitly).
    user_embedding_dim (`int`, defaults to 512):
        d_u, the width of the collaborative-filtering user embeddings (PMF, k = 512 in the paper).
    num_neighbors (`int`, defaults to 20):
        n, how many most cosine-similar users S_u the prompt encoder attends over (20 for Beauty/Sports, 10 Toys).
    prompt_encoder (`str`, defaults to `"mha"`):
        `"mha"`: H-head attention from u over its neighbours, eqs. (1)-(9); `"mlp"`: a linear map of u alone to
        the prompt (the paper's "0 heads" ablation); `"none"`: no collaborative prompt, i.e. POD.
    prompt_encoder_heads (`int`, defaults to 4):
        H, the number of attention heads of the collaborative prompt encoder; must divide `d_model`.
    collaborative_prompt_length (`int`, defaults to 3):
        L_p, the number of collaborative user-prompt vectors (the paper's |p_mha| = 3).
    add_user_prompt_to_tokens (`bool`, defaults to `False`):
        Besides prepending the L_p collaborative-prompt vectors (the paper), add their mean to the embedding of
        every input token. Prepended alone, the prompt is 3 of the ~100 (sequential) to ~500 (top-n) encoder
        positions, and a randomly initialised decoder's near-uniform cross-attention gives it that share of its
        context (0.5% on top-n, measured): the user signal is diluted and learnt late. A vector added to every
        position survives any averaging over positions. Measured: faster uptake on a constructed task
        (tests/test_learning.py), none on the synthetic data at 100-300 steps (README, "Model learning").
    use_task_prompts (`bool`, defaults to `True`):
        Whether to prepend the learned task-specific prompts of POD ("PeaPOD (no task)" ablation when False).
    task_prompt_length (`int`, defaults to 3):
        L_t, the number of task-prompt vectors per task.
    tasks (`list[str]`, defaults to `["sequential", "topn", "explanation"]`, the order of `TASK_REGISTRY`):
        Task names; `task_ids` index into this list. The order must be the data's (`check_task_order`): the
        prepared data numbers its tasks in `TASK_REGISTRY` order.
    max_whole_word_ids (`int`, defaults to 512):
        Size of the whole-word embedding table: index 0 marks non-ID tokens, index i the i-th ID span.
    user_embedding_norm (`str`, defaults to `"none"`):
        How the frozen user embeddings u and s_i are normalised before the projections of eqs. (1)-(3).
        `"none"`: as given (the paper); collaborative-filtering factors come at whatever scale their training gave
        them, and attention logits then grow with a neighbour's norm. `"l2"`: each row rescaled to L2 norm
        sqrt(d_u) (unit root-mean-square, the scale the fan-in initialised projections expect), so attention
        depends on direction only. `"layernorm"`: a learned `nn.LayerNorm(d_u)` shared by u and its neighbours.
        Measured on the synthetic data: `"layernorm"` gave no gain at 300 steps (README, "Model learning").
    collaborative_prompt_norm (`str`, defaults to `"none"`):
        How the collaborative prompt p (the output of eq. (6)/(9)) is scaled before it joins the token embeddings.
        `"none"`: as the projections give it (the paper). It starts ~15x smaller than the token embeddings
        (fan-in initialised projections of a PMF row of norm ~3) and, trained, grows without bound (mean norm
        886 after 900 steps and 1,506 after 1,800 on the planted data, against tokens' ~10): every step of Adam
        then turns its direction less. `"rms"`: each of the L_p vectors is RMS-normalised with a learned gain
        (T5's own `T5LayerNorm`, initialised to 1), so it starts and stays at the token embeddings' scale (norm
        sqrt(d_m)). Measured on the planted `user` data (README, "Recipe probes"): `"rms"` learns *slower* (top-n
        HR@10 0.128 against 0.231 at 900 steps) — held at the tokens' scale, the prompt is mixed away by the
        encoder and the decoder's cross-attention on it falls (23% -> 2%), where the paper's growing prompt keeps
        it (40% -> 55%). Kept as an option for the record; the paper's `"none"` stays the default.
    prompt_attention_norm (`str`, defaults to `"none"`):
        How the mha prompt encoder's per-head queries and keys (eqs. (5), (7)) are scaled before their dot product.
        `"none"`: as the projections give them (the paper). Their norms grow with training and the softmax over the
        n neighbours saturates: on the planted `neighbors` data every head ends on one neighbour (top weight
        0.9999 after 4,800 steps), where the softmax's gradient is zero, so which neighbour it attends can no
        longer be learnt. `"qk"`: each head's query and key are RMS-normalised over d_k with learned gains (T5's
        `T5LayerNorm`, initialised to 1) — "QK-norm" (Dehghani et al. 2023; Wortsman et al. 2023, who trace
        attention-logit growth to the same saturation) — so a logit is at most sqrt(d_k) times the gains and
        attention stays trainable. Only for `prompt_encoder="mha"`. Measured on the planted `neighbors` data at 4,800
        steps (README, "Planted `neighbors` variant"): top-n HR@10 0.280 against the paper's 0.198, 0.325 with
        `neighbor_rank_bias` too.
    neighbor_rank_bias (`bool`, defaults to `False`):
        Add a learned bias per head and neighbour rank to the mha attention logits of eq. (5), initialised to 0 (so
        the attention starts as the paper's). The neighbour lists are ordered by similarity, most similar first
        (`build_user_neighbors`), but the paper's attention is invariant to their order and has to rediscover
        similarity through W_Q and W_K; with a rank bias it can learn "the most similar neighbours matter" once for
        all users, as T5's relative position bias does for token distances. Only for `prompt_encoder="mha"`;
        explicit `user_neighbors` must then be ordered the same way (`fold_in_users` gives them so). Measured with
        `prompt_attention_norm="qk"` on the planted `neighbors` data at 4,800 steps (README, "Planted `neighbors`
        variant"): the bias falls with the rank, the attention on the users who carry the signal rises from the
        uniform 0.175 to 0.285, and top-n HR@10 from 0.280 (qk alone) to 0.325 (POD: 0.177); on the planted `user`
        data, 0.739 (0.97 x PMF) at 3,600 steps against the paper's 0.585 with seed 0, 0.693 against 0.560 with seed 1
        (at 900 steps the lead depends on the seed: +0.147 with seed 0, -0.044 with seed 1).
    user_prompt_dropout (`float`, defaults to 0.0):
        In training only, the share of samples whose collaborative prompt is that of the unknown user (row 0 of the
        user table) instead of their own; 0.0 = the paper. Not in the paper: a from-scratch model that is given the
        user's community by its prompt has little reason left to read the ids in its text, so samples without the
        prompt keep that route trained (modality dropout). Text, task prompts and evaluation are unchanged.
        Measured on the demo's synthetic data, explanations alone (README, "The explanation target"): with 0.5, 0.841
        of the explanations name their item's feature at 1,200 steps against 0.322 with the paper's prompt.
    loss_reduction (`str`, defaults to `"sequence"`):
        `"sequence"`: eq. (10), each target's mean token loss, averaged over the batch; `"token"`: the mean over
        all target tokens of the batch (transformers' default for T5).
    decoder_start_token_id (`int`, defaults to 0):
        T5 starts decoding from the pad token; transformers 5.x no longer puts this in `T5Config`, so it is
        declared here to let a config built from scratch train and generate.
    fold_in_regularization (`float`, *optional*):
        lambda of the collaborative-filtering model whose user factors fill the user table, when its item factors
        are kept in the checkpoint (the `item_factors` buffer, [num_items + 1, d_u], row 0 unused) so users who are
        not in the table can be folded in (`PeaPODForConditionalGeneration.fold_in_users`). For cornac's PMF (the
        default table, `datasets_scripts.user_embeddings.train_pmf`) it is `lambda_reg`, 1e-3. None (the
        default): the checkpoint has no item factors and cannot fold users in.
    fold_in_negatives_per_positive (`int`, defaults to 1):
        How many unobserved items per observed one the CF model was trained on with rating 0 (`train_pmf`'s
        `negatives_per_positive`, 1 by default; 0 = positives only). Fold-in weighs every unobserved item by the
        probability that the seeded uniform draw picked it, i.e. solves the expectation of that objective.
    data_fingerprint (`dict`, *optional*):
        The identity of the prepared data the model was trained on, recorded by `peapod-train`:
        `{"sha256": <16 hex digits>, "num_users": U, "num_items": I}`, the hash over the files that define the data
        (`datasets_scripts.prepared.data_fingerprint`). `peapod-train` (continuing a checkpoint) and
        `peapod-evaluate` refuse a prepared folder with another fingerprint (`--allow_other_data` overrides), and
        `from_pretrained` refuses a config whose `num_users`/`num_items` disagree with it. None: not recorded
        (checkpoints from before the field existed, or models never trained on a prepared folder).
    """

    model_type = "peapod"

    num_users: int = 0
    num_items: int = 0
    user_embedding_dim: int = 512
    num_neighbors: int = 20
    prompt_encoder: PromptEncoder = "mha"
    user_embedding_norm: UserEmbeddingNorm = "none"
    collaborative_prompt_norm: CollaborativePromptNorm = "none"
    prompt_attention_norm: PromptAttentionNorm = "none"
    neighbor_rank_bias: bool = False
    prompt_encoder_heads: int = 4
    collaborative_prompt_length: int = 3
    add_user_prompt_to_tokens: bool = False
    use_task_prompts: bool = True
    task_prompt_length: int = 3
    tasks: list[str] | tuple[str, ...] = DEFAULT_TASKS
    max_whole_word_ids: int = 512
    user_prompt_dropout: float = 0.0
    loss_reduction: LossReduction = "sequence"
    decoder_start_token_id: int | None = 0
    fold_in_regularization: float | None = None
    fold_in_negatives_per_positive: int = 1
    data_fingerprint: dict | None = None

    def __post_init__(self, **kwargs):
        self.tasks = list(self.tasks)
        self._validate_peapod_fields()
        super().__post_init__(**kwargs)

    def _validate_peapod_fields(self) -> None:
        if self.prompt_encoder not in PROMPT_ENCODERS:
            raise ValueError(f"prompt_encoder={self.prompt_encoder!r} is not one of {PROMPT_ENCODERS}")
        if self.user_embedding_norm not in USER_EMBEDDING_NORMS:
            raise ValueError(
                f"user_embedding_norm={self.user_embedding_norm!r} is not one of {USER_EMBEDDING_NORMS}"
            )
        if self.collaborative_prompt_norm not in COLLABORATIVE_PROMPT_NORMS:
            raise ValueError(
                f"collaborative_prompt_norm={self.collaborative_prompt_norm!r} is not one of "
                f"{COLLABORATIVE_PROMPT_NORMS}"
            )
        if self.prompt_attention_norm not in PROMPT_ATTENTION_NORMS:
            raise ValueError(
                f"prompt_attention_norm={self.prompt_attention_norm!r} is not one of {PROMPT_ATTENTION_NORMS}"
            )
        if self.prompt_attention_norm != "none" and self.prompt_encoder != "mha":
            raise ValueError(
                f"prompt_attention_norm={self.prompt_attention_norm!r} needs prompt_encoder='mha' (got "
                f"{self.prompt_encoder!r}): only the mha prompt encoder has queries and keys"
            )
        if self.neighbor_rank_bias and self.prompt_encoder != "mha":
            raise ValueError(
                f"neighbor_rank_bias=True needs prompt_encoder='mha' (got {self.prompt_encoder!r}): only the mha "
                "prompt encoder attends over neighbours"
            )
        if self.loss_reduction not in LOSS_REDUCTIONS:
            raise ValueError(f"loss_reduction={self.loss_reduction!r} is not one of {LOSS_REDUCTIONS}")
        non_negative = {
            "num_users": self.num_users,
            "num_items": self.num_items,
            "task_prompt_length": self.task_prompt_length,
        }
        positive = {
            "user_embedding_dim": self.user_embedding_dim,
            "num_neighbors": self.num_neighbors,
            "prompt_encoder_heads": self.prompt_encoder_heads,
            "collaborative_prompt_length": self.collaborative_prompt_length,
            "max_whole_word_ids": self.max_whole_word_ids,
            "d_model": self.d_model,
        }
        for name, value in non_negative.items():
            if not isinstance(value, int) or value < 0:
                raise ValueError(f"{name}={value!r} must be an integer >= 0")
        for name, value in positive.items():
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name}={value!r} must be an integer >= 1")
        if self.prompt_encoder == "mha" and self.d_model % self.prompt_encoder_heads != 0:
            raise ValueError(
                f"d_model={self.d_model} is not divisible by prompt_encoder_heads={self.prompt_encoder_heads}: "
                "each head has width d_model / H (eq. 7)"
            )
        # num_users = 0 is the default (no user table yet; `PeaPODForConditionalGeneration.set_user_table` or a
        # config with num_users fills it), so the neighbour count is only checked against a real table.
        if self.prompt_encoder == "mha" and self.num_users > 0 and self.num_neighbors > self.num_users - 1:
            raise ValueError(
                f"num_neighbors={self.num_neighbors} exceeds num_users - 1 = {self.num_users - 1}: "
                "a user cannot be its own neighbour"
            )
        if self.fold_in_regularization is not None and not (
            isinstance(self.fold_in_regularization, (int, float)) and not isinstance(self.fold_in_regularization, bool)
            and self.fold_in_regularization >= 0
        ):
            raise ValueError(f"fold_in_regularization={self.fold_in_regularization!r} must be None or a number >= 0")
        if isinstance(self.user_prompt_dropout, bool) or not (
            isinstance(self.user_prompt_dropout, (int, float)) and 0 <= self.user_prompt_dropout < 1
        ):
            raise ValueError(f"user_prompt_dropout={self.user_prompt_dropout!r} must be a number in [0, 1)")
        if not isinstance(self.fold_in_negatives_per_positive, int) or self.fold_in_negatives_per_positive < 0:
            raise ValueError(
                f"fold_in_negatives_per_positive={self.fold_in_negatives_per_positive!r} must be an integer >= 0"
            )
        if len(self.tasks) == 0 or len(set(self.tasks)) != len(self.tasks):
            raise ValueError(f"tasks={self.tasks!r} must be a non-empty list of distinct names")
        if self.use_task_prompts and self.task_prompt_length < 1:
            raise ValueError("use_task_prompts=True needs task_prompt_length >= 1")
        fingerprint = self.data_fingerprint
        if fingerprint is not None and not (
            isinstance(fingerprint, dict) and isinstance(fingerprint.get("sha256"), str)
            and all(isinstance(fingerprint.get(name), int) for name in ("num_users", "num_items"))
        ):
            raise PeaPODInputError(
                f"data_fingerprint={fingerprint!r} must be None or "
                "{'sha256': str, 'num_users': int, 'num_items': int}"
            )

    @property
    def num_prompt_vectors(self) -> int:
        """L_t + L_p: how many vectors are prepended to the token embeddings."""
        task = self.task_prompt_length if self.use_task_prompts else 0
        collaborative = self.collaborative_prompt_length if self.prompt_encoder != "none" else 0
        return task + collaborative

    @classmethod
    def from_t5(cls, t5_config_or_name: str | T5Config = "t5-small", **peapod_fields) -> PeaPODConfig:
        """A PeaPOD config from any T5 config, checkpoint name or path, or one of `NAMED_SHAPES`, plus PeaPOD fields.

        A named shape needs no download (for offline work); any other name is resolved with `AutoConfig` (a Hub
        name such as "t5-small" when online, or a local folder with a config.json).
        """
        if isinstance(t5_config_or_name, str) and t5_config_or_name in NAMED_SHAPES:
            t5_fields = dict(NAMED_SHAPES[t5_config_or_name], vocab_size=32128)
        else:
            t5_config = (
                t5_config_or_name
                if isinstance(t5_config_or_name, T5Config)
                else AutoConfig.from_pretrained(t5_config_or_name)
            )
            t5_fields = {
                name: getattr(t5_config, name)
                for name in (
                    "vocab_size", "d_model", "d_kv", "d_ff", "num_layers", "num_decoder_layers", "num_heads",
                    "relative_attention_num_buckets", "relative_attention_max_distance", "dropout_rate",
                    "layer_norm_epsilon", "initializer_factor", "feed_forward_proj", "pad_token_id", "eos_token_id",
                )
            }
            if not getattr(t5_config, "scale_decoder_outputs", True):  # T5 v1.1 checkpoints
                t5_fields["tie_word_embeddings"] = False
        return cls(**{**t5_fields, **peapod_fields})


__all__ = [
    "COLLABORATIVE_PROMPT_NORMS", "DEFAULT_TASKS", "LOSS_REDUCTIONS", "NAMED_SHAPES", "PROMPT_ATTENTION_NORMS",
    "PROMPT_ENCODERS", "TASK_REGISTRY", "USER_EMBEDDING_NORMS",
    "CollaborativePromptNorm", "LossReduction", "PeaPODConfig", "PeaPODInputError", "PromptAttentionNorm", "PromptEncoder",
    "TaskSpec", "UserEmbeddingNorm",
    "check_task_order", "task_spec",
]
