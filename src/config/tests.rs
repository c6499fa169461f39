use super::*;

#[test]
fn passwords_are_redacted() {
    let shown = redact_url("redis://:hunter2@db:6379/0");
    assert!(!shown.contains("hunter2"), "{shown}");
    assert!(shown.contains("db:6379"));
    let shown = redact_url("redis://admin:hunter2@db:6379");
    assert!(!shown.contains("hunter2"), "{shown}");
    let shown = redact_url("rediss://:hunter2@db.example.com:6380");
    assert!(!shown.contains("hunter2"), "{shown}");
    assert!(shown.starts_with("rediss://"), "{shown}");
    assert_eq!(redact_url("not a url :hunter2@"), "<unparsable URL>");
}

#[test]
fn debug_output_has_no_password() {
    let config = Config::try_parse_from(["jobd", "--redis-url", "redis://:s3cret@h:1"]).unwrap();
    assert!(!format!("{config:?}").contains("s3cret"));
}

#[test]
fn defaults_are_valid() {
    let config = Config::try_parse_from(["jobd"]).unwrap();
    config.validate().unwrap();
    assert_eq!(config.redis.redis_pool_size, 4);
}
