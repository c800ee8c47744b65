"""The starter rules file: one placeholder rule per Polar product, loadable as it is."""

from __future__ import annotations

from polar.v2026_10.outputs import Product

from polar_credits.polar_setup.plan import MeterSpec
from polar_credits.polar_setup.toml_text import key_from_name, toml_str


def starter_rules(meters: list[MeterSpec], products: list[Product]) -> str:
    """A rules file that loads as it is: one rule per product on the first meter, each
    granting a placeholder 1 unit to change; a commented `every` rule for recurring ones."""
    meter = meters[0].key
    lines = [
        "# Starter rules written by `polar-credits setup` from your Polar products.",
        "# Every `units = 1` is a placeholder: set what each product grants, delete the",
        "# rules you do not want, then check it: `polar-credits rules check <this file>`.",
        '# README: "The rules file".',
        "",
    ]
    if not products:  # before any table, or it would belong to the last one
        lines += ["# No products yet: add [[rules]] below, and remove this line.", "rules = []", ""]
    lines += [m.toml() for m in meters]
    ids: set[str] = set()
    for product in products:
        rule_id = _unique(key_from_name(product.name, sep="-") or "product", ids)
        name = " ".join(str(product.name).split())
        product_id = toml_str(product.id)
        if product.is_recurring:
            count, unit = product.recurring_interval_count or 1, product.recurring_interval
            every = f"{count} {unit}s" if count > 1 else unit
            lines += [
                f"# {name}: a subscription billed every {every}. Granted at its start and at",
                "# each renewal (Polar resets metered meters then, so grant each cycle).",
                "[[rules]]",
                f"id = {toml_str(rule_id)}",
                f"meter = {toml_str(meter)}",
                "units = 1",
                f"products = [{product_id}]",
                'billing_reasons = ["subscription_create", "subscription_cycle"]',
                "",
                "# Or an allowance on a cadence of its own (monthly on a yearly plan):",
                '# README "Allowances on their own cadence". Uncomment, and run setup again',
                "# with --rules so the webhook endpoint gets the subscription.* events.",
                "# [[rules]]",
                f"# id = {toml_str(rule_id + '-allowance')}",
                f"# meter = {toml_str(meter)}",
                "# units = 1",
                '# every = "1 month"',
                f"# products = [{product_id}]",
                "",
            ]
        else:
            lines += [
                f"# {name}: a one-time purchase.",
                "[[rules]]",
                f"id = {toml_str(rule_id)}",
                f"meter = {toml_str(meter)}",
                "units = 1",
                f"products = [{product_id}]",
                'billing_reasons = ["purchase"]',
                "",
            ]
    return "\n".join(lines)


def _unique(base: str, taken: set[str]) -> str:
    candidate, n = base, 2
    while candidate in taken:
        candidate, n = f"{base}-{n}", n + 1
    taken.add(candidate)
    return candidate
