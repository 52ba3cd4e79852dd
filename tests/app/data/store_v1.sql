-- A judging database written by deft-app's store before criteria, skips, flags and the audit
-- (schema version 1), through its public API; opened by tests/app/test_app_store.py.
BEGIN TRANSACTION;
CREATE TABLE annotators (
    name TEXT PRIMARY KEY,
    password_hash TEXT NOT NULL,
    role TEXT NOT NULL CHECK (role IN ('annotator', 'admin'))
);
INSERT INTO "annotators" VALUES('ann1','scrypt$8614f25b79c432e67f66ae4da49102b8$4418dc16d7846fb44cd2ece0f24e60267d9cc4c8966243d21404fe1cff680d1e3394c3b911137a289f525960a6af837db401545439303a4dc06b2e9f9458f2bd','annotator');
INSERT INTO "annotators" VALUES('ann2','scrypt$c9ed5696e143d9fd617665f6e2ae928c$4536c8a557eacdec886071fda917c7499a5c7236e202ac2e093e2c19bf2c002053a6e59ac974d516124f49ea3888ec824fd152e1a42838961dfdc304d4d35d81','annotator');
INSERT INTO "annotators" VALUES('boss','scrypt$897d17b22e30ab0b1f237c9d4dbd0fee$3aabe3bd1ac8f7227dbdd86900742fc946dba530fb5ed0d696593200ef88ab8c67008e5193a37c2189be74b61433cc29b11a8ac11e3af5f4c90afdfd0f79ff13','admin');
CREATE TABLE items (
    id TEXT PRIMARY KEY,
    dialogue TEXT NOT NULL,          -- JSON list of {role, content}: the turns before the answers
    category TEXT,
    model_a TEXT NOT NULL, answer_a TEXT NOT NULL,
    model_b TEXT NOT NULL, answer_b TEXT NOT NULL
);
INSERT INTO "items" VALUES('q0','[{"role": "user", "content": "question 0"}, {"role": "assistant", "content": "earlier answer"}, {"role": "user", "content": "and then?"}]',NULL,'dpo','A answer 0','deft','B answer 0');
INSERT INTO "items" VALUES('q1','[{"role": "user", "content": "question 1"}]','writing','dpo','A answer 1','deft','B answer 1');
INSERT INTO "items" VALUES('q2','[{"role": "user", "content": "question 2"}]',NULL,'dpo','A answer 2','deft','B answer 2');
INSERT INTO "items" VALUES('q3','[{"role": "user", "content": "question 3"}]','writing','dpo','A answer 3','deft','B answer 3');
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
INSERT INTO "meta" VALUES('layout_secret','707bc6b9aff4d43269f234ea27edac5f43bade351754ea0545bfb051d5f3128d');
CREATE TABLE reservations (
    item_id TEXT NOT NULL REFERENCES items(id),
    annotator TEXT NOT NULL REFERENCES annotators(name),
    expires REAL NOT NULL,
    PRIMARY KEY (item_id, annotator)
);
INSERT INTO "reservations" VALUES('q1','ann2',1.79633770619149684905e+09);
CREATE TABLE votes (
    item_id TEXT NOT NULL REFERENCES items(id),
    annotator TEXT NOT NULL REFERENCES annotators(name),
    verdict TEXT NOT NULL CHECK (verdict IN ('a', 'b', 'tie', 'both_bad')),
    left_model TEXT NOT NULL,         -- which model's answer was shown on the left
    comment TEXT NOT NULL DEFAULT '',
    created REAL NOT NULL,
    PRIMARY KEY (item_id, annotator)
);
INSERT INTO "votes" VALUES('q0','ann1','a','dpo','clear',1.7963368061881344319e+09);
INSERT INTO "votes" VALUES('q0','ann2','tie','deft','',1.79633680618948769576e+09);
INSERT INTO "votes" VALUES('q1','ann1','both_bad','deft','a "quoted", comma',1.79633680619095778465e+09);
COMMIT;
