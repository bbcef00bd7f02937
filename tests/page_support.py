"""Playwright page helpers shared by the browser tests (the chat tab's input, parameters, replies and badges)."""
from __future__ import annotations

from playwright.sync_api import Page, expect  # requirements-dev.txt


def open_app(pg: Page, url: str) -> Page:
    pg.goto(url)
    expect(pg.locator("#chat-input textarea")).to_be_visible(timeout=60_000)
    return pg


def set_params(pg: Page, prefix: str, max_new_tokens: int, greedy: bool = True) -> None:
    number = pg.locator(f"#{prefix}-max-new-tokens input[type=number]")
    if not number.is_visible():  # open the accordion (a second click would close it)
        pg.locator(f"#{prefix}-params").get_by_text("Generation parameters").click()
    slider = pg.locator(f"#{prefix}-max-new-tokens input[type=range]")
    for attempt in range(5):  # a freshly shown tab may still be rendering and drop the first edit
        number.fill(str(max_new_tokens))
        number.press("Enter")
        try:
            expect(slider).to_have_value(str(max_new_tokens), timeout=3_000)
            break
        except AssertionError:
            if attempt == 4:
                raise
    box = pg.locator(f"#{prefix}-greedy input")
    box.set_checked(greedy)
    expect(box).to_be_checked(checked=greedy)


def send(pg: Page, text: str) -> None:
    pg.locator("#chat-input textarea").fill(text)
    pg.locator("#chat-send").click()


def bot(pg: Page):
    return pg.locator('#chat-chatbot [data-testid="bot"]')


def user(pg: Page):
    return pg.locator('#chat-chatbot [data-testid="user"]')


def badges(pg: Page):
    return pg.locator("#chat-chatbot .reply-badge")
