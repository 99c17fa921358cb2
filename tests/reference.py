"""The model cards' transformers recipe, run one input at a time: the yardstick for the runtime.

Written from the Qwen3-Embedding / Qwen3-Reranker model cards, independently of the library:
it uses ``AutoTokenizer`` with its default behaviour and the full ``Qwen3ForCausalLM`` logits.
With ``split_special_tokens=True`` user text is tokenized with transformers' switch of that name
(special tokens spelled as text, other added tokens kept), the runtime's documented exception.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from transformers import AutoModel, AutoModelForCausalLM, AutoTokenizer

EOD_ID = 151643  # <|endoftext|>
CARD_TASK = "Given a web search query, retrieve relevant passages that answer the query"


def get_detailed_instruct(task_description: str, query: str) -> str:
    return f"Instruct: {task_description}\nQuery:{query}"


class ReferenceEmbedder:
    def __init__(self, path: str, max_length: int, split_special_tokens: bool = False) -> None:
        self.tokenizer = AutoTokenizer.from_pretrained(path, padding_side="left")
        self.split = split_special_tokens
        self.model = AutoModel.from_pretrained(path, dtype=torch.float32).eval()
        self.max_length = max_length
        probe = self.tokenizer("probe")["input_ids"]
        self.appends_eos = probe[-1] == EOD_ID

    def token_ids(self, text: str) -> list[int]:
        if self.appends_eos:
            # Current tokenizer revision: the post-processor appends <|endoftext|> and
            # truncation keeps room for it.
            return self.tokenizer(
                text, truncation=True, max_length=self.max_length, split_special_tokens=self.split
            )["input_ids"]
        # Original README recipe: truncate, then append the end-of-document id by hand.
        ids = self.tokenizer(
            text, truncation=True, max_length=self.max_length - 1, split_special_tokens=self.split
        )["input_ids"]
        return [*ids, EOD_ID]

    @torch.no_grad()
    def embed(self, text: str, dim: int | None = None) -> torch.Tensor:
        ids = torch.tensor([self.token_ids(text)])
        out = self.model(input_ids=ids, attention_mask=torch.ones_like(ids))
        vec = out.last_hidden_state[0, -1]
        if dim is not None:
            vec = vec[:dim]
        return F.normalize(vec.float(), p=2, dim=0)


class ReferenceReranker:
    PREFIX = (
        "<|im_start|>system\nJudge whether the Document meets the requirements based on the "
        'Query and the Instruct provided. Note that the answer can only be "yes" or "no".'
        "<|im_end|>\n<|im_start|>user\n"
    )
    SUFFIX = "<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"

    def __init__(self, path: str, max_length: int, split_special_tokens: bool = False) -> None:
        self.tokenizer = AutoTokenizer.from_pretrained(path, padding_side="left")
        self.split = split_special_tokens
        self.model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
        self.max_length = max_length
        self.prefix_tokens = self.tokenizer.encode(self.PREFIX, add_special_tokens=False)
        self.suffix_tokens = self.tokenizer.encode(self.SUFFIX, add_special_tokens=False)
        self.yes = self.tokenizer.convert_tokens_to_ids("yes")
        self.no = self.tokenizer.convert_tokens_to_ids("no")

    @staticmethod
    def format_instruction(instruction: str | None, query: str, doc: str) -> str:
        if instruction is None:
            instruction = CARD_TASK
        return f"<Instruct>: {instruction}\n<Query>: {query}\n<Document>: {doc}"

    def token_ids(self, query: str, doc: str, instruction: str | None = None) -> list[int]:
        return self.batch_token_ids(query, [doc], instruction)[0]

    def batch_token_ids(
        self, query: str, docs: list[str], instruction: str | None = None
    ) -> list[list[int]]:
        pairs = [self.format_instruction(instruction, query, doc) for doc in docs]
        bodies = self.tokenizer(
            pairs,
            padding=False,
            truncation="longest_first",
            return_attention_mask=False,
            max_length=self.max_length - len(self.prefix_tokens) - len(self.suffix_tokens),
            split_special_tokens=self.split,
        )["input_ids"]
        return [self.prefix_tokens + body + self.suffix_tokens for body in bodies]

    def score(self, query: str, doc: str, instruction: str | None = None) -> float:
        return self.score_ids(self.token_ids(query, doc, instruction))

    @torch.no_grad()
    def score_ids(self, token_ids: list[int]) -> float:
        ids = torch.tensor([token_ids])
        logits = self.model(input_ids=ids).logits[:, -1, :]
        pair = torch.stack([logits[:, self.no], logits[:, self.yes]], dim=1)
        return float(torch.nn.functional.log_softmax(pair, dim=1)[:, 1].exp()[0])
