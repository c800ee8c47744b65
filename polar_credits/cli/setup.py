"""`polar-credits setup`: Polar's prerequisites (token, meter, webhook endpoint, starter rules)
checked and made in one idempotent command; the logic is in polar_credits/polar_setup/."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from polar_credits.cli.base import ExitCode, JsonOption, app, console, emit, fail
from polar_credits.rules import RulesError, load_rules
from polar_credits.settings import Settings, SettingsError, load_settings

if TYPE_CHECKING:
    from polar_credits import polar_setup

_WORDS = {"create": "create", "update": "update", "keep": "keep", "warn": "warning",
          "problem": "PROBLEM", "ok": "ok", "skip": "skipped"}  # fmt: skip


@app.command(
    rich_help_panel="Polar",
    help="Check and make what the service needs in Polar: the access token and its scopes, "
    "the Sum meter, products that would reset it, the webhook endpoint (with exactly the "
    "events the service consumes) and a starter rules file. Run it again at will: a second "
    "run changes nothing.\n\n"
    "Uses POLAR_ACCESS_TOKEN, POLAR_SERVER (sandbox or production) or POLAR_API_URL.\n\n"
    "Exit status: 0 when Polar is set up (or the plan is printed), 1 on a problem found "
    "(nothing is changed then) or a change Polar refused, 2 on a bad setting or a token "
    "Polar refuses, 5 when Polar cannot be reached.",
)
def setup(
    webhook_url: Annotated[
        str | None,
        typer.Option(
            "--webhook-url",
            help="The API's public webhook URL (https://<host>/webhooks/polar): registered, or "
            "updated to the events the service consumes.",
        ),
    ] = None,
    rules: Annotated[
        Path | None,
        typer.Option(
            "--rules",
            help="Your rules file (default CREDITS_RULES_FILE): its meters are checked, and its "
            "cadence rules add the subscription.* events.",
        ),
    ] = None,
    meter_name: Annotated[
        str, typer.Option("--meter-name", help="Without a rules file: the meter to find or create.")
    ] = "API calls",
    event_name: Annotated[
        str,
        typer.Option("--event-name", help="Without a rules file: the event name the meter counts."),
    ] = "api_usage",
    property_: Annotated[
        str, typer.Option("--property", help="Without a rules file: the metadata key it sums.")
    ] = "units",
    write_rules: Annotated[
        Path | None,
        typer.Option(
            "--write-rules",
            help="Write a starter rules file here from your products (never overwrites a file).",
        ),
    ] = None,
    show_secret: Annotated[
        bool,
        typer.Option(
            "--show-secret",
            help="Print an existing endpoint's secret too (a new endpoint's is always printed).",
        ),
    ] = False,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Print the plan; change nothing.")
    ] = False,
    as_json: bool = JsonOption,
) -> None:
    # polar-sdk takes a while to import: only this command pays for it.
    from polar_credits import polar_setup

    try:
        settings = load_settings("POLAR_ACCESS_TOKEN")
    except SettingsError as exc:
        fail(str(exc), ExitCode.USAGE)
    rules_path = rules or settings.credits_rules_file
    request = polar_setup.SetupRequest(
        meter_name=meter_name,
        event_name=event_name,
        property=property_,
        webhook_url=webhook_url,
        write_rules=write_rules,
    )
    if rules_path is not None:
        try:
            request.rules = load_rules(rules_path)
        except RulesError as exc:
            fail(str(exc), ExitCode.USAGE)
    plan = asyncio.run(_run(settings, request, dry_run=dry_run))
    _report(plan, settings, dry_run=dry_run, show_secret=show_secret, as_json=as_json,
            from_rules=request.rules is not None)  # fmt: skip
    if plan.problems:
        raise typer.Exit(int(ExitCode.FAILED))


async def _run(
    settings: Settings, request: polar_setup.SetupRequest, *, dry_run: bool
) -> polar_setup.Plan:
    from polar.base import (
        PolarClientError,
        PolarDeserializationError,
        PolarError,
        PolarRateLimitError,
    )
    from polar.v2026_10 import PolarAsync

    from polar_credits import polar_setup

    assert settings.polar_access_token is not None
    where = settings.polar_target
    polar = PolarAsync(
        settings.polar_access_token.get_secret_value(),
        environment=settings.polar_server,
        base_url=settings.polar_api_url,
        timeout=settings.polar_timeout_seconds,
    )
    try:
        async with polar:
            plan = await polar_setup.make_plan(polar, request)
            if not dry_run and not plan.problems:
                await polar_setup.apply_plan(polar, plan)
    except polar_setup.TokenRefused:
        fail(
            f"Polar ({where}) refused POLAR_ACCESS_TOKEN (401): it is wrong, revoked or "
            "expired, or a token of the other server (sandbox and production tokens differ). "
            "Create an organization access token in Polar: Settings → Developers.",
            ExitCode.USAGE,
        )
    except polar_setup.SetupError as exc:
        fail(f"{exc} (changes listed before this one were made; run setup again)")
    except FileExistsError as exc:
        fail(f"{exc.filename} appeared meanwhile: not overwritten", ExitCode.CONFLICT)
    except PolarRateLimitError:
        fail(
            f"Polar ({where}) kept answering 429 (the organization's rate limit, shared with "
            "your application); try again in a minute",
            ExitCode.UNAVAILABLE,
        )
    except (PolarClientError, PolarDeserializationError) as exc:
        fail(f"Polar ({where}) answered unexpectedly: {exc}")
    except PolarError as exc:  # network errors, timeouts, 5xx
        fail(f"cannot reach Polar ({where}): {exc}; try again", ExitCode.UNAVAILABLE)
    return plan


def _report(
    plan: polar_setup.Plan,
    settings: Settings,
    *,
    dry_run: bool,
    show_secret: bool,
    as_json: bool,
    from_rules: bool,
) -> None:
    webhook = plan.webhook
    created_endpoint = webhook is not None and any(
        s.area == "webhook" and s.action == "create" for s in plan.steps
    )
    # The secret goes to stdout only, once: when the endpoint is new, or when asked.
    secret = None
    if webhook is not None and not dry_run and not plan.problems:
        if created_endpoint or show_secret:
            secret = webhook.secret
    meters_toml = (
        None
        if from_rules or any(m.id is None for m in plan.meters)
        else "\n".join(m.toml() for m in plan.meters)
    )
    if as_json:
        data: dict[str, Any] = {
            "polar": settings.polar_target,
            "dry_run": dry_run,
            "nothing_to_do": plan.nothing_to_do,
            "changed": not dry_run and not plan.problems and not plan.nothing_to_do,
            "problems": len(plan.problems),
            "steps": [s.as_json() for s in plan.steps],
            "meters": [
                {
                    "key": m.key,
                    "id": m.id,
                    "name": m.name,
                    "event_name": m.event_name,
                    "property": m.property,
                }
                for m in plan.meters
            ],  # fmt: skip
            "meters_toml": meters_toml,
            "webhook": None
            if webhook is None
            else {"id": webhook.endpoint_id, "url": webhook.url, "events": webhook.events},
            "webhook_secret": secret,
            "scopes_missing": plan.scopes_missing,
            "rules_file_written": str(plan.rules_file)
            if plan.rules_file and not dry_run and not plan.problems
            else None,
        }
        emit(data, as_json=True)
        return
    title = "plan (dry run)" if dry_run else "setup"
    console.print(f"{title} against Polar {settings.polar_target}:", highlight=False)
    for step in plan.steps:
        style = {"problem": "red", "warn": "yellow", "create": "green", "update": "green"}
        word = _WORDS[step.action]
        console.print(
            f"  {step.area:<10} [{style.get(step.action, 'default')}]{word:<8}[/] ",
            end="",
            highlight=False,
        )
        console.print(step.detail, markup=False, highlight=False)
    changes = sum(s.action in ("create", "update") for s in plan.steps)
    if plan.problems:
        console.print(
            f"{len(plan.problems)} problem(s): nothing was changed. Fix them, then run again.",
            style="red",
            highlight=False,
        )
    elif plan.nothing_to_do:
        console.print("nothing to do: Polar is set up", style="green", highlight=False)
    elif dry_run:
        console.print(
            f"{changes} change(s) to make; nothing was changed (dry run)", highlight=False
        )
    else:
        console.print(f"done: {changes} change(s) made", style="green", highlight=False)
    if meters_toml:
        console.print("\nThe meter for your rules file (CREDITS_RULES_FILE):", highlight=False)
        typer.echo(meters_toml)
    if plan.rules_file is not None and not dry_run and not plan.problems:
        console.print(
            f"wrote {plan.rules_file}: set each rule's units, then "
            f"`polar-credits rules check {plan.rules_file}`",
            markup=False,
            highlight=False,
        )
    if secret:
        note = "shown once" if created_endpoint else "--show-secret"
        console.print(
            f"\nThe endpoint's signing secret ({note}): set POLAR_WEBHOOK_SECRET to it "
            "for the API.",
            highlight=False,
        )
        typer.echo(f"POLAR_WEBHOOK_SECRET={secret}")
