"""Errors in the shape of the API that was called, so each official client reports them."""

from __future__ import annotations

import json
from typing import Any, Literal

from pydantic import ValidationError
from starlette.responses import JSONResponse

from qwen3_rag.core.tokenization import replace_surrogates


class SafeJSONResponse(JSONResponse):
    r"""JSON that any text can be written as.

    UTF-16 surrogates that a request carried (JSON's ``"\ud800"``) and an answer echoes become
    U+FFFD, as the core does with them before the model sees them, instead of failing the
    answer with a ``UnicodeEncodeError``.
    """

    def render(self, content: Any) -> bytes:
        """Compact JSON, UTF-8."""
        text = json.dumps(
            content, ensure_ascii=False, allow_nan=False, indent=None, separators=(",", ":")
        )
        try:
            return text.encode("utf-8")
        except UnicodeEncodeError:
            return replace_surrogates(text).encode("utf-8")


#: Which error body an endpoint answers with.
ApiStyle = Literal["openai", "cohere", "tei", "ours"]

_OPENAI_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    404: "not_found_error",
    405: "invalid_request_error",
    408: "timeout_error",
    413: "invalid_request_error",
    422: "invalid_request_error",
    503: "server_error",
    504: "timeout_error",
}
_TEI_TYPES = {
    400: "Validation",
    401: "Unauthorized",
    404: "NotFound",
    405: "Validation",
    408: "Validation",
    413: "Validation",
    422: "Validation",
    503: "Overloaded",
    504: "Backend",
}


class ApiError(Exception):
    """An answer other than 200, described once and rendered in each API's shape.

    Args:
        status: HTTP status.
        message: One line for the caller; names the field and the bad value.
        param: The request field at fault (OpenAI's ``param``), e.g. ``input[3]``.
        headers: Extra response headers (``Retry-After``, ``WWW-Authenticate``).
    """

    def __init__(
        self,
        status: int,
        message: str,
        param: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.headers = headers or {}
        #: Set where the request itself decides the shape (a rerank body of TEI or of Cohere).
        self.style: ApiStyle | None = None

    def response(self, style: ApiStyle) -> SafeJSONResponse:
        """The JSON response ``style``'s clients expect."""
        body: Any
        if style == "openai":
            body = {
                "error": {
                    "message": self.message,
                    "type": _OPENAI_TYPES.get(self.status, "server_error"),
                    "param": self.param,
                    "code": None,
                }
            }
        elif style == "tei":
            body = {"error": self.message, "error_type": _TEI_TYPES.get(self.status, "Backend")}
        else:
            body = {"message": self.message}
        return SafeJSONResponse(body, status_code=self.status, headers=self.headers)


def field_path(loc: tuple[Any, ...]) -> str:
    """``("input", 3)`` -> ``input[3]``; pydantic's union branch names are dropped."""
    path = ""
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        elif isinstance(part, str) and (
            part in ("str", "int", "bool", "list[any]", "list[str]", "dict[str,any]")
            or part.startswith(("list[", "function-", "literal[", "RerankDocument"))
        ):
            continue  # the branch of a union that failed, not a field
        else:
            path += ("." if path else "") + part
    return path or "body"


def validation_error(e: ValidationError) -> ApiError:
    """A 422 naming the first bad field, its problem, and how many more there are."""
    errors = e.errors(include_url=False, include_input=False)
    first = errors[0]
    where = field_path(tuple(first["loc"]))
    more = f" (and {len(errors) - 1} more problems)" if len(errors) > 1 else ""
    return ApiError(422, f"{where}: {first['msg']}{more}", param=where)
