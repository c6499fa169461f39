use std::time::Duration;

use super::*;

fn budget(process: u64, per_principal: u64) -> Budget {
    Budget::new(
        Setting::new("max-things", "things", process),
        Setting::new("max-things-per-principal", "things", per_principal),
    )
}

#[test]
fn a_principal_is_held_to_its_share_and_everyone_to_the_process_budget() {
    let budget = budget(3, 2);
    let a1 = budget.take(Some("a"), 1).unwrap();
    let _a2 = budget.take(Some("a"), 1).unwrap();
    let refused = budget.take(Some("a"), 1).err().unwrap();
    assert_eq!(refused.setting, "max-things-per-principal");
    assert_eq!(refused.principal.as_deref(), Some("a"));
    assert_eq!(
        refused.to_string(),
        "the budget max-things-per-principal (2 things) is used up for principal a"
    );
    let _b = budget.take(Some("b"), 1).unwrap();
    let refused = budget.take(None, 1).err().unwrap();
    assert_eq!(
        (refused.setting, refused.limit, refused.principal),
        ("max-things", 3, None)
    );
    drop(a1);
    assert_eq!(budget.used(), 2);
    let _anyone = budget.take(None, 1).unwrap();
}

#[test]
fn permits_give_back_what_they_took() {
    let budget = budget(10, 10);
    let permits: Vec<_> = (0..5).map(|_| budget.take(Some("p"), 2).unwrap()).collect();
    assert!(budget.take(Some("q"), 1).is_err());
    drop(permits);
    assert_eq!(budget.used(), 0);
    assert!(lock(&budget.0.used).by_principal.is_empty());
}

#[tokio::test]
async fn a_waiting_take_gets_room_when_a_permit_is_dropped() {
    let budget = budget(4, 4);
    let held = budget.take(None, 3).unwrap();
    let waiting = tokio::spawn({
        let budget = budget.clone();
        async move { budget.wait(100).await.amount }
    });
    tokio::task::yield_now().await;
    assert!(!waiting.is_finished());
    drop(held);
    assert_eq!(waiting.await.unwrap(), 4);
}

const PATIENCE: Duration = Duration::from_secs(5);

#[tokio::test]
async fn a_reservation_takes_the_room_there_is_and_settles_at_what_it_carries() {
    let budget = budget(10, 8);
    let held = budget.take(Some("p"), 3).unwrap();
    // Room for the principal: 8 - 3 = 5 of the 6 it asks.
    let mut reserved = budget.reserve(Some("p"), 6, PATIENCE).await.unwrap();
    assert_eq!(reserved.amount(), 5);
    assert!(!reserved.is_whole());
    let short = reserved.shortfall().unwrap();
    assert_eq!(short.setting, "max-things-per-principal");
    reserved.settle(2);
    assert_eq!((reserved.amount(), budget.used()), (2, 5));
    // Settled, it keeps what it holds, whatever a reply claims to carry beyond.
    reserved.settle(100);
    assert_eq!(reserved.amount(), 2);
    drop((held, reserved));
    assert_eq!(budget.used(), 0);
    // Nothing held: an amount over the whole budget asks for all of it, and holds it whole.
    let whole = budget.reserve(Some("q"), 100, PATIENCE).await.unwrap();
    assert_eq!(whole.amount(), 8);
    assert!(whole.is_whole() && whole.shortfall().is_none());
    let refused = budget
        .reserve(Some("q"), 1, Duration::ZERO)
        .await
        .err()
        .unwrap();
    assert_eq!(refused.setting, "max-things-per-principal");
}

#[tokio::test]
async fn a_reservation_waits_for_unsettled_ones_rather_than_take_less() {
    let budget = budget(10, 10);
    let mut first = budget.reserve(None, 8, PATIENCE).await.unwrap();
    let waiting = tokio::spawn({
        let budget = budget.clone();
        async move { budget.reserve(None, 8, PATIENCE).await.unwrap() }
    });
    tokio::task::yield_now().await;
    assert!(
        !waiting.is_finished(),
        "2 bytes are left, and the first will settle"
    );
    first.settle(1);
    let mut second = waiting.await.unwrap();
    assert_eq!(second.amount(), 8);
    second.settle(8);
    // With no reservation unsettled: what room there is, or a refusal at once.
    let mut rest = budget.reserve(None, 8, PATIENCE).await.unwrap();
    assert_eq!(rest.amount(), 1);
    assert!(rest.shortfall().is_some());
    rest.settle(1);
    let refused = budget.reserve(None, 1, PATIENCE).await.err().unwrap();
    assert_eq!((refused.setting, budget.used()), ("max-things", 10));
}
