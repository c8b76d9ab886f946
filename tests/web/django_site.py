"""A minimal Django site for the tests: settings, URLs and views on the default guard (`costguard.configure`)."""

from __future__ import annotations

import io
from collections.abc import AsyncIterator, Iterator
from typing import Any

import django
from django.conf import settings
from django.http import FileResponse, HttpRequest, HttpResponse, JsonResponse, StreamingHttpResponse
from django.urls import path
from scenario import CHUNKS, labels_now, plan_label

import costguard

if not settings.configured:
    settings.configure(
        DEBUG=False,
        SECRET_KEY="costguard-tests-only",
        ALLOWED_HOSTS=["*"],
        ROOT_URLCONF=__name__,
        MIDDLEWARE=["costguard.django.CostGuardMiddleware"],
        INSTALLED_APPS=[],
        DATABASES={},
        COSTGUARD={"labels": f"{__name__}.request_plan"},
    )
    django.setup()


def request_plan(request: HttpRequest) -> dict[str, object]:
    return plan_label(request.headers.get("X-Plan"))


@costguard.with_kill_switch("chat")
def ask() -> str:
    return "answer"


@costguard.with_kill_switch("chat")
async def aask() -> str:
    return "answer"


def health(request: HttpRequest, rest: str = "") -> HttpResponse:
    return JsonResponse({"ok": True})


def chat(request: HttpRequest) -> HttpResponse:
    return JsonResponse({"answer": ask()})


async def achat(request: HttpRequest) -> HttpResponse:
    return JsonResponse({"answer": await aask()})


def stream(request: HttpRequest) -> HttpResponse:
    def chunks() -> Iterator[bytes]:
        for _ in range(CHUNKS):
            ask()
            yield b"chunk\n"

    return StreamingHttpResponse(chunks(), content_type="text/plain")


async def astream(request: HttpRequest) -> HttpResponse:
    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(CHUNKS):
            await aask()
            yield b"chunk\n"

    return StreamingHttpResponse(chunks(), content_type="text/plain")


def download(request: HttpRequest) -> HttpResponse:
    return FileResponse(io.BytesIO(b"file body"), content_type="application/octet-stream")


def labels(request: HttpRequest) -> HttpResponse:
    return JsonResponse(labels_now())


urlpatterns: list[Any] = [
    path("health", health),
    path("health/<path:rest>", health),
    path("chat", chat),
    path("achat", achat),
    path("stream", stream),
    path("astream", astream),
    path("labels", labels),
    path("download", download),
]
