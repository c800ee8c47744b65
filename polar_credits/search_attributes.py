"""The search attributes every order run carries, so operators find grants in the Temporal UI."""

from temporalio.common import SearchAttributeKey

POLAR_ORDER_ID = SearchAttributeKey.for_keyword("PolarOrderId")
POLAR_CUSTOMER_ID = SearchAttributeKey.for_keyword("PolarCustomerId")
POLAR_PRODUCT_ID = SearchAttributeKey.for_keyword("PolarProductId")
CREDIT_STATUS = SearchAttributeKey.for_keyword("CreditStatus")
CREDIT_UNITS = SearchAttributeKey.for_int("CreditUnits")

ALL = (POLAR_ORDER_ID, POLAR_CUSTOMER_ID, POLAR_PRODUCT_ID, CREDIT_STATUS, CREDIT_UNITS)


def dev_server_flags() -> list[str]:
    """`--search-attribute Name=Type` flags that register them on `temporal server start-dev`."""
    kinds = {"KEYWORD": "Keyword", "INT": "Int"}
    return [
        flag
        for key in ALL
        for flag in ("--search-attribute", f"{key.name}={kinds[key.indexed_value_type.name]}")
    ]
