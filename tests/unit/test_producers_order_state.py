"""The order state machine and fold, pure: transitions with 409 reasons; snapshot + tail == replay."""

from __future__ import annotations

from decimal import Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cdc.schemas import OrderItem, payload_json
from producers.order_state import (
    CancelOrder,
    Command,
    ConfirmPayment,
    CreateOrder,
    DeliverOrder,
    OrderNotFoundError,
    OrderState,
    OrderStatus,
    RefundOrder,
    ShipOrder,
    StoredEvent,
    TransitionError,
    decide,
    fold_order,
)

ITEMS = [
    OrderItem(product_id="p-1", quantity=2, unit_price=Decimal("10.00")),
    OrderItem(product_id="p-2", quantity=1, unit_price=Decimal("5.50")),
]


def run(commands: list[Command], order_id: str = "o-1") -> tuple[OrderState, list[StoredEvent], list[str]]:
    """Apply commands in order; returns final state, the events written and the refusal reasons."""
    state = OrderState(order_id=order_id)
    events: list[StoredEvent] = []
    refusals: list[str] = []
    for command in commands:
        try:
            event_type, payload = decide(state, command)
        except (TransitionError, OrderNotFoundError) as exc:
            refusals.append(str(exc))
            continue
        event = StoredEvent(event_type, state.version + 1, payload_json(payload))
        state = fold_order([event], state)
        events.append(event)
    return state, events, refusals


def test_happy_lifecycle() -> None:
    state, events, refusals = run(
        [
            CreateOrder(customer_id="c", items=ITEMS),
            ConfirmPayment(),
            ShipOrder(carrier="UPS"),
            DeliverOrder(),
        ]
    )
    assert refusals == []
    assert [e.type for e in events] == ["OrderCreated", "PaymentConfirmed", "OrderShipped", "OrderDelivered"]
    assert state.status is OrderStatus.DELIVERED and state.version == 4
    assert state.total == Decimal("25.50") and state.paid_amount == Decimal("25.50")


@pytest.mark.parametrize(
    ("commands", "reason"),
    [
        ([ShipOrder()], "Cannot ship an order before payment"),
        ([DeliverOrder()], "not shipped"),
        ([ConfirmPayment(), ConfirmPayment()], "Order already paid"),
        ([ConfirmPayment(amount=Decimal("1.00"))], "does not match the order total"),
        ([RefundOrder()], "Cannot refund an order that was not paid"),
        ([ConfirmPayment(), RefundOrder(), RefundOrder()], "Order already refunded"),
        ([ConfirmPayment(), RefundOrder(amount=Decimal("99.00"))], "exceeds the refundable amount"),
        ([ConfirmPayment(), ShipOrder(), CancelOrder()], "Cannot cancel an order that is shipped"),
        ([CancelOrder(), ConfirmPayment()], "Cannot pay a cancelled order"),
        ([CancelOrder(), CancelOrder()], "Order already cancelled"),
        ([CreateOrder(customer_id="c", items=ITEMS)], "already exists"),
    ],
)
def test_invalid_transitions_have_reasons(commands: list[Command], reason: str) -> None:
    state, events, refusals = run([CreateOrder(customer_id="c", items=ITEMS), *commands])
    assert refusals, "the last command should have been refused"
    assert reason in refusals[-1]
    assert state.version == len(events)


def test_command_on_missing_order_is_not_found() -> None:
    with pytest.raises(OrderNotFoundError, match="not found"):
        decide(OrderState(order_id="nope"), ConfirmPayment())


def test_partial_refunds_until_fully_refunded() -> None:
    state, _events, refusals = run(
        [
            CreateOrder(customer_id="c", items=ITEMS),
            ConfirmPayment(),
            RefundOrder(amount=Decimal("20.00")),
            RefundOrder(amount=Decimal("5.50")),
        ]
    )
    assert refusals == []
    assert state.status is OrderStatus.REFUNDED and state.refunds == 2


def test_fold_rejects_a_version_gap() -> None:
    _state, events, _ = run([CreateOrder(customer_id="c", items=ITEMS), ConfirmPayment()])
    with pytest.raises(ValueError, match="version"):
        fold_order([events[1]], order_id="o-1")


# -- snapshot + tail == full replay -------------------------------------------------------------------

money = st.decimals(min_value=Decimal("0.01"), max_value=Decimal("9.99"), places=2)
commands = st.lists(
    st.one_of(
        st.builds(ConfirmPayment),
        st.builds(ShipOrder),
        st.builds(DeliverOrder),
        st.builds(CancelOrder),
        st.builds(RefundOrder, amount=money),
        st.builds(RefundOrder),
    ),
    max_size=40,
)


@settings(max_examples=200, deadline=None)
@given(lifecycle=commands, interval=st.integers(min_value=1, max_value=7))
def test_snapshot_plus_tail_equals_full_replay(lifecycle: list[Command], interval: int) -> None:
    items = [OrderItem(product_id="p-1", quantity=10, unit_price=Decimal("10.00"))]
    final, events, _ = run([CreateOrder(customer_id="c", items=items), *lifecycle])
    full = fold_order(events, order_id="o-1")
    assert full == final
    # Every snapshot the store would take (versions interval, 2*interval, ...), stored as JSON and read back.
    for at in range(interval, len(events) + 1, interval):
        snapshot = OrderState.from_document(fold_order(events[:at], order_id="o-1").to_document())
        assert fold_order(events[at:], snapshot) == full
