//! The schema migrations, run against real SQLite files with Spin's semantics.

use spindle_store::migrations::{MIGRATIONS, Migration, latest_version, migrate_with};
use spindle_store::split::split_statements;
use spindle_store::{Db, MigrationError, RusqliteDb, Value, migrate};
use std::path::Path;
use std::sync::{Arc, Barrier};

fn count(db: &dyn Db, sql: &str) -> i64 {
    db.execute(sql, &[])
        .unwrap()
        .scalar()
        .unwrap()
        .as_i64()
        .unwrap()
}

fn schema_objects(db: &dyn Db) -> i64 {
    count(
        db,
        "SELECT COUNT(*) FROM sqlite_master WHERE name NOT LIKE 'sqlite_%' AND name != 'schema_migrations'",
    )
}

#[test]
fn fresh_database_gets_every_statement_of_every_migration() {
    let db = RusqliteDb::memory();
    let outcome = migrate(&db).unwrap();
    assert_eq!(outcome.schema, latest_version());
    assert_eq!(
        outcome.applied,
        MIGRATIONS.iter().map(|m| m.version).collect::<Vec<_>>()
    );
    // Each CREATE statement makes one table or index and each ALTER TABLE …
    // ADD COLUMN one column: if the splitter lost a statement (Spin would
    // run only the first of a joined string), a count is short.
    let statements: Vec<String> = MIGRATIONS
        .iter()
        .flat_map(|m| split_statements(m.sql).unwrap())
        .map(|s| s.to_string())
        .collect();
    let creates = statements
        .iter()
        .filter(|s| s.trim_start().starts_with("CREATE "))
        .count();
    assert_eq!(schema_objects(&db), creates as i64);
    let (mut columns, mut seeds) = (0, 0);
    for statement in &statements {
        let words: Vec<&str> = statement.split_whitespace().collect();
        if let ["ALTER", "TABLE", table, "ADD", "COLUMN", column, ..] = words[..] {
            let found = count(
                &db,
                &format!(
                    "SELECT COUNT(*) FROM pragma_table_info('{table}') WHERE name = '{column}'"
                ),
            );
            assert_eq!(found, 1, "{statement}");
            columns += 1;
        }
        // Seed rows (the heartbeat's one row): the table holds at least one.
        if let ["INSERT", "INTO", table, ..] = words[..] {
            let rows = count(&db, &format!("SELECT COUNT(*) FROM {table}"));
            assert!(rows >= 1, "{statement}");
            seeds += 1;
        }
    }
    assert_eq!(
        creates + columns + seeds,
        statements.len(),
        "only CREATE, ADD COLUMN and seed INSERT"
    );
}

#[test]
fn second_run_applies_nothing() {
    let db = RusqliteDb::memory();
    migrate(&db).unwrap();
    let before = count(&db, "SELECT COUNT(*) FROM schema_migrations");
    let again = migrate(&db).unwrap();
    assert!(again.applied.is_empty());
    assert_eq!(again.schema, latest_version());
    assert_eq!(count(&db, "SELECT COUNT(*) FROM schema_migrations"), before);
}

#[test]
fn failing_migration_leaves_no_half_applied_state() {
    let db = RusqliteDb::memory();
    migrate(&db).unwrap();
    let objects = schema_objects(&db);
    let mut broken = MIGRATIONS.to_vec();
    broken.push(Migration {
        version: latest_version() + 1,
        name: "broken.sql",
        sql: "CREATE TABLE half (x INTEGER);\nCREATE INDEX half_x ON half (x);\nTHIS IS NOT SQL;",
    });
    let error = migrate_with(&db, &broken).unwrap_err();
    assert!(
        matches!(error, MigrationError::Statement { version, .. } if version == latest_version() + 1)
    );
    assert_eq!(
        schema_objects(&db),
        objects,
        "the first statements were kept"
    );
    assert_eq!(
        count(&db, "SELECT MAX(version) FROM schema_migrations"),
        latest_version()
    );
}

#[test]
fn failure_in_the_first_migration_leaves_an_empty_database() {
    let db = RusqliteDb::memory();
    let broken = [Migration {
        version: 1,
        name: "broken.sql",
        sql: "CREATE TABLE a (x INTEGER); CREATE TABLE a (x INTEGER);",
    }];
    assert!(migrate_with(&db, &broken).is_err());
    assert_eq!(
        count(&db, "SELECT COUNT(*) FROM sqlite_master"),
        0,
        "not even schema_migrations may survive"
    );
}

#[test]
fn edited_migration_is_refused() {
    let db = RusqliteDb::memory();
    let original = [Migration {
        version: 1,
        name: "a.sql",
        sql: "CREATE TABLE a (x INTEGER)",
    }];
    migrate_with(&db, &original).unwrap();
    let edited = [
        Migration {
            sql: "CREATE TABLE a (x TEXT)",
            ..original[0]
        },
        Migration {
            version: 2,
            name: "b.sql",
            sql: "CREATE TABLE b (x INTEGER)",
        },
    ];
    assert_eq!(
        migrate_with(&db, &edited),
        Err(MigrationError::Changed { version: 1 })
    );
}

#[test]
fn database_from_a_newer_release_is_refused() {
    let db = RusqliteDb::memory();
    migrate(&db).unwrap();
    db.execute(
        "INSERT INTO schema_migrations VALUES (?, 'future.sql', 'x', 0)",
        &[Value::Integer(latest_version() + 5)],
    )
    .unwrap();
    assert!(matches!(migrate(&db), Err(MigrationError::TooNew { .. })));
}

#[test]
fn racing_instances_apply_each_migration_once() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("race.db");
    let racers = 8;
    let barrier = Arc::new(Barrier::new(racers));
    let handles: Vec<_> = (0..racers)
        .map(|_| {
            let (path, barrier) = (path.clone(), barrier.clone());
            std::thread::spawn(move || {
                // Each instance has its own connection, as each Spin request does.
                let db = RusqliteDb::open(&path).unwrap();
                barrier.wait();
                migrate(&db).unwrap().applied
            })
        })
        .collect();
    let applied: Vec<Vec<i64>> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    let winners = applied.iter().filter(|a| !a.is_empty()).count();
    assert_eq!(winners, 1, "exactly one instance applies: {applied:?}");
    let db = RusqliteDb::open(&path).unwrap();
    assert_eq!(
        count(&db, "SELECT COUNT(*) FROM schema_migrations"),
        MIGRATIONS.len() as i64
    );
}

#[test]
fn migration_list_matches_the_files() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../migrations");
    let mut files: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|name| name.ends_with(".sql"))
        .collect();
    files.sort();
    let listed: Vec<&str> = MIGRATIONS.iter().map(|m| m.name).collect();
    assert_eq!(files, listed);
    for (index, migration) in MIGRATIONS.iter().enumerate() {
        assert_eq!(
            migration.version,
            index as i64 + 1,
            "versions are 1, 2, 3, …"
        );
        assert!(
            migration
                .name
                .starts_with(&format!("{:04}_", migration.version))
        );
    }
}
