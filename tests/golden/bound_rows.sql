-- SELECT count(*) FROM persons
SELECT COUNT(*) AS _col_0 FROM (SELECT district, gender, education, employed, age, income, credit_score, registered_on, person_id FROM persons_v1 WHERE __sandbox_rank <= 1) AS persons

-- SELECT p.district, sum(l.amount) FROM persons p JOIN loans l ON p.person_id = l.person_id GROUP BY p.district
SELECT p.district AS district, SUM(l.amount) AS _col_1 FROM (SELECT district, gender, education, employed, age, income, credit_score, registered_on, person_id FROM persons_v1 WHERE __sandbox_rank <= 1) AS p JOIN (SELECT amount, rate, term_months, purpose, status, issued_on, person_id FROM loans_v1 WHERE __sandbox_rank <= 10) AS l ON p.person_id = l.person_id GROUP BY p.district

-- SELECT d.name_zh, count(*) FROM persons p JOIN districts d ON p.district = d.district GROUP BY d.name_zh
SELECT d.name_zh AS name_zh, COUNT(*) AS _col_1 FROM (SELECT district, gender, education, employed, age, income, credit_score, registered_on, person_id FROM persons_v1 WHERE __sandbox_rank <= 1) AS p JOIN (SELECT district, district_code, name_zh, area_km2 FROM districts_v1) AS d ON p.district = d.district GROUP BY d.name_zh

-- WITH big AS (SELECT person_id, amount FROM loans WHERE amount > 100000) SELECT count(*) FROM big
SELECT COUNT(*) AS _col_0 FROM (SELECT amount, rate, term_months, purpose, status, issued_on, person_id FROM loans_v1 WHERE __sandbox_rank <= 10) AS loans WHERE loans.amount > 100000

-- SELECT avg(total) FROM (SELECT person_id, sum(amount) AS total FROM loans WHERE status <> 'repaid' GROUP BY person_id) t
SELECT AVG(t.total) AS _col_0 FROM (SELECT loans.person_id AS person_id, SUM(TRY(CASE WHEN CAST(loans.amount AS DOUBLE) > 2000000 THEN 2000000 WHEN CAST(loans.amount AS DOUBLE) < 0 THEN 0 ELSE CAST(loans.amount AS DOUBLE) END)) AS total FROM (SELECT amount, rate, term_months, purpose, status, issued_on, person_id FROM loans_v1 WHERE __sandbox_rank <= 10) AS loans WHERE loans.status <> 'repaid' GROUP BY loans.person_id) AS t
