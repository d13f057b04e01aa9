"""The one exception routes raise; it becomes {"error": {...}, "request_id": ...}."""

from __future__ import annotations


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers or {}


def not_found(what: str = "job") -> ApiError:
    return ApiError(404, "not_found", f"{what} not found")
