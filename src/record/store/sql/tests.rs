use super::*;

#[test]
fn numbered_placeholders_become_dollar_ones_outside_strings() {
    assert_eq!(placeholders("SELECT ?1, ?12 FROM t WHERE a = ?2"), "SELECT $1, $12 FROM t WHERE a = $2");
    assert_eq!(placeholders("SELECT '?1', ?1"), "SELECT '?1', $1");
    assert_eq!(placeholders("SELECT ? FROM t"), "SELECT ? FROM t");
}

#[test]
fn a_location_is_the_database_url_when_given_else_the_data_dir() {
    let dir = Path::new("/var/lib/gatehouse");
    assert_eq!(Location::of(dir, None), Location::Dir(dir.to_path_buf()));
    assert_eq!(Location::of(dir, Some(" ")), Location::Dir(dir.to_path_buf()));
    assert_eq!(Location::of(dir, Some("postgres://db/g")), Location::Postgres("postgres://db/g".into()));
    assert_eq!(Location::Dir(dir.to_path_buf()).describe(), "/var/lib/gatehouse/gatehouse.db");
}

#[test]
fn a_password_never_appears_in_a_described_url() {
    assert_eq!(redact("postgres://gh:s3cret@db:5432/g"), "postgres://gh:***@db:5432/g");
    assert_eq!(redact("postgres://gh@db/g"), "postgres://gh@db/g");
    assert_eq!(redact("host=db user=gh"), "host=db user=gh");
}
