//! Suppression lists: confined to their tenant, paged by address, an
//! address added twice keeps its first entry, and lifting removes it.

use sendonce_shared::domain::{Note, Tenant};
use sendonce_shared::store::{Added, Store};
use sendonce_testkit::TestDatabase;

use crate::store_for;

async fn migrated(db: &TestDatabase) -> Store {
    let store = store_for(db);
    store.migrate().await.expect("migrate");
    store
}

fn tenant(name: &str) -> Tenant {
    Tenant::parse(name).expect("a tenant")
}

#[tokio::test]
async fn adding_an_address_twice_keeps_its_first_entry() {
    let db = TestDatabase::create().await;
    let store = migrated(&db).await;
    let shop = tenant("shop");
    let first_note = Note::parse("asked to stop").expect("a note");
    let later_note = Note::parse("again").expect("a note");

    let first = store
        .add_suppression(&shop, "ada@example.com", Some(&first_note))
        .await
        .expect("add");
    let again = store
        .add_suppression(&shop, "ada@example.com", Some(&later_note))
        .await
        .expect("add again");

    let Added::New(entry) = first else {
        panic!("the first add is new: {first:?}");
    };
    assert_eq!(
        (entry.reason.as_str(), entry.note.as_deref()),
        ("manual", Some("asked to stop"))
    );
    assert_eq!(again, Added::Existing(entry));
}

#[tokio::test]
async fn a_bounce_entry_stays_a_bounce_when_the_address_is_added_by_hand() {
    let db = TestDatabase::create().await;
    let store = migrated(&db).await;
    db.connect()
        .await
        .execute(
            "INSERT INTO suppressions (tenant, address, reason, smtp_reply, job_id)
             VALUES ('shop', 'ada@example.com', 'bounce', '550 5.1.1 no such user', gen_random_uuid())",
            &[],
        )
        .await
        .expect("a bounce");

    let added = store
        .add_suppression(&tenant("shop"), "ada@example.com", None)
        .await
        .expect("add");

    let Added::Existing(entry) = added else {
        panic!("the address was listed: {added:?}");
    };
    assert_eq!(entry.reason, "bounce");
    assert_eq!(entry.smtp_reply.as_deref(), Some("550 5.1.1 no such user"));
    assert!(entry.job_id.is_some());
}

#[tokio::test]
async fn a_list_is_seen_and_lifted_only_in_its_own_tenant() {
    let db = TestDatabase::create().await;
    let store = migrated(&db).await;
    let (shop, billing) = (tenant("shop"), tenant("billing"));
    store
        .add_suppression(&shop, "ada@example.com", None)
        .await
        .expect("add");

    let lifted_elsewhere = store
        .lift_suppression(&billing, "ada@example.com")
        .await
        .expect("lift");
    let seen_elsewhere = store
        .suppressions_page(Some(&billing), None, 10)
        .await
        .expect("page");

    assert!(!lifted_elsewhere);
    assert!(seen_elsewhere.is_empty());
    assert!(
        store
            .suppression(&shop, "ada@example.com")
            .await
            .expect("get")
            .is_some()
    );
    assert!(
        store
            .lift_suppression(&shop, "ada@example.com")
            .await
            .expect("lift")
    );
    assert_eq!(
        store
            .suppression(&shop, "ada@example.com")
            .await
            .expect("get"),
        None
    );
}

#[tokio::test]
async fn lists_page_by_tenant_and_address() {
    let db = TestDatabase::create().await;
    let store = migrated(&db).await;
    for (owner, address) in [
        ("shop", "carol@example.com"),
        ("billing", "zed@example.com"),
        ("shop", "ada@example.com"),
        ("shop", "bob@example.com"),
    ] {
        store
            .add_suppression(&tenant(owner), address, None)
            .await
            .expect("add");
    }
    let shop = tenant("shop");

    let first = store
        .suppressions_page(Some(&shop), None, 2)
        .await
        .expect("page");
    let last = &first[1];
    let rest = store
        .suppressions_page(Some(&shop), Some((&last.tenant, &last.address)), 2)
        .await
        .expect("page");
    let everyone = store.suppressions_page(None, None, 10).await.expect("page");

    let addresses: Vec<&str> = first
        .iter()
        .chain(&rest)
        .map(|s| s.address.as_str())
        .collect();
    assert_eq!(
        addresses,
        ["ada@example.com", "bob@example.com", "carol@example.com"]
    );
    let all: Vec<(&str, &str)> = everyone
        .iter()
        .map(|s| (s.tenant.as_str(), s.address.as_str()))
        .collect();
    assert_eq!(all[0], ("billing", "zed@example.com"));
    assert_eq!(all.len(), 4);
}
