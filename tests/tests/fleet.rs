#![cfg(unix)]

use tokend_tests::postgres::PgCluster;

#[test]
fn the_private_postgresql_cluster_answers_survives_a_restart_and_dumps() {
    let mut pg = PgCluster::start();
    assert_eq!(pg.psql("SELECT 1"), "1");
    assert_eq!(pg.psql("SHOW listen_addresses"), "", "no TCP port");
    assert_eq!(pg.psql("SELECT current_database()"), "tokend");
    pg.psql("CREATE TABLE kept (v text); INSERT INTO kept VALUES ('before-the-restart')");
    let url = pg.url();
    assert_eq!(
        url,
        format!(
            "postgresql://postgres@/tokend?host={}",
            pg.socket_dir().display()
        )
    );
    assert!(pg.socket_dir().join(".s.PGSQL.5432").exists());
    pg.stop();
    assert!(!pg.try_psql("SELECT 1").status.success(), "stopped");
    pg.start_again();
    assert_eq!(pg.psql("SELECT v FROM kept"), "before-the-restart");
    let dump = pg.dump();
    assert!(dump.contains("CREATE TABLE public.kept"), "{dump}");
    assert!(dump.contains("before-the-restart"), "{dump}");
}
