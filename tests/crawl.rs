//! The crawler against real nodes in-process: what it reads over the wire must be what each node
//! says its table is.

mod util;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use testbed_crawl::{Config, Crawler};
use testbed_events::{Envelope, Event, SnapshotReason};
use util::{InProcessNode, test_args, wait_for};

const NODES: usize = 10;

/// (peer, bucket) of the latest `routing_table` a node wrote.
fn logged_table(events: &[Envelope]) -> Option<BTreeSet<(String, u32)>> {
    events.iter().rev().find_map(|e| match &e.event {
        Event::RoutingTable { peers, .. } => Some(
            peers
                .iter()
                .map(|p| (p.peer_id.clone(), p.bucket))
                .collect(),
        ),
        _ => None,
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crawled_tables_equal_the_tables_the_nodes_logged() {
    // Slow walks: the tables must stand still while they are compared.
    let quiet = ["--walk-interval", "10m", "--bootstrap-interval", "10m"];
    let bootstrap = InProcessNode::start(test_args(&[&["--key-seed", "0"][..], &quiet].concat()));
    let (bootstrap_id, bootstrap_addr) = bootstrap.started().await;
    let seed = format!("{bootstrap_addr}/p2p/{bootstrap_id}");
    let mut nodes = vec![bootstrap];
    for _ in 1..NODES {
        nodes.push(InProcessNode::start(test_args(
            &[&["--bootstrap", seed.as_str()][..], &quiet].concat(),
        )));
    }
    let mut ids = Vec::new();
    for node in &nodes {
        ids.push(node.started().await.0);
    }
    let full = |nodes: &[InProcessNode]| {
        nodes
            .iter()
            .all(|n| logged_table(&n.events()).is_some_and(|t| t.len() == NODES - 1))
    };
    wait_for(
        "every node to log a table of the other nine",
        Duration::from_secs(60),
        || full(&nodes).then_some(()),
        || {
            nodes
                .iter()
                .map(|n| format!("{:?}", logged_table(&n.events()).map(|t| t.len())))
                .collect::<Vec<_>>()
                .join(", ")
        },
    )
    .await;

    let mut crawler = Crawler::new(Config {
        seeds: vec![seed.parse().expect("multiaddr")],
        ..Config::default()
    })
    .expect("crawler starts");
    let crawler_id = crawler.peer_id().to_string();
    let mut events = Vec::new();
    let summary = tokio::time::timeout(Duration::from_secs(60), crawler.round(|e| events.push(e)))
        .await
        .expect("a round over 10 nodes ends within 60 s");

    let mut crawled: BTreeMap<String, BTreeSet<(String, u32)>> = BTreeMap::new();
    for event in &events {
        match event {
            Event::RoutingTable {
                reason,
                peers,
                size,
                crawled: Some(c),
            } => {
                assert_eq!(*reason, SnapshotReason::Crawl);
                assert_eq!(*size, peers.len());
                assert!(c.complete, "{} read whole", c.peer_id);
                assert_eq!(
                    c.agent_version.as_deref(),
                    Some(concat!("kad-node/", env!("CARGO_PKG_VERSION"))),
                    "Identify named the software"
                );
                assert!(c.requests >= 1);
                crawled.insert(
                    c.peer_id.clone(),
                    peers
                        .iter()
                        .map(|p| (p.peer_id.clone(), p.bucket))
                        .collect(),
                );
            }
            Event::CrawlFailed { .. } => panic!("no node may fail: {event:?}"),
            _ => {}
        }
    }
    assert_eq!(summary.nodes, NODES, "{events:?}");
    assert_eq!(summary.failed, 0);
    assert!(matches!(
        events.last(),
        Some(Event::CrawlCompleted { nodes: NODES, .. })
    ));

    // Same moment: the tables did not move while the crawler read them.
    for (node, id) in nodes.iter().zip(&ids) {
        let logged = logged_table(&node.events()).expect("logged a table");
        assert_eq!(crawled.get(id), Some(&logged), "{id}: crawled vs logged");
        assert!(
            !logged.iter().any(|(p, _)| *p == crawler_id),
            "the crawler is in nobody's table"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_seed_where_nothing_listens_is_reported_not_skipped() {
    // Port 9 (discard) on loopback: nothing listens in a test sandbox, the dial is refused.
    let mut crawler = Crawler::new(Config {
        seeds: vec!["/ip4/127.0.0.1/tcp/9".parse().expect("multiaddr")],
        ..Config::default()
    })
    .expect("crawler starts");
    let mut events = Vec::new();
    let summary = tokio::time::timeout(Duration::from_secs(30), crawler.round(|e| events.push(e)))
        .await
        .expect("the round ends");
    assert_eq!((summary.nodes, summary.failed), (0, 1), "{events:?}");
    match &events[0] {
        Event::CrawlFailed {
            peer_id: None,
            addrs,
            error,
        } => {
            assert_eq!(addrs, &["/ip4/127.0.0.1/tcp/9".to_owned()]);
            assert!(!error.is_empty());
        }
        other => panic!("expected crawl_failed, got {other:?}"),
    }
}
