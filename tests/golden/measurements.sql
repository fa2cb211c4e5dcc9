-- SELECT district, count(*), avg(income) FROM persons GROUP BY district
SELECT __rel.__k0 AS __k0, SUM(__rel.__v0) AS __m0, SUM(__rel.__v1) AS __m1, SUM(__rel.__v2) AS __m2 FROM (SELECT persons.person_id AS __unit, persons.district AS __k0, 1 AS __v0, CAST(ROUND(CASE WHEN persons.income IS NULL THEN NULL ELSE GREATEST(LEAST(persons.income, 2000000), 0) END) AS BIGINT) AS __v1, CASE WHEN NOT persons.income IS NULL THEN 1 ELSE 0 END AS __v2 FROM (SELECT district, gender, education, employed, age, income, credit_score, registered_on, person_id FROM persons_v1 WHERE __sandbox_rank <= 1) AS persons) AS __rel GROUP BY __rel.__k0

-- SELECT count(DISTINCT person_id) FROM loans WHERE purpose = 'mortgage'
SELECT COUNT(DISTINCT __rel.__v0) AS __m0 FROM (SELECT loans.person_id AS __unit, loans.person_id AS __v0 FROM (SELECT amount, rate, term_months, purpose, status, issued_on, person_id FROM loans_v1 WHERE __sandbox_rank <= 10) AS loans WHERE loans.purpose = 'mortgage') AS __rel

-- SELECT count(*) FILTER (WHERE status = 'default') FROM loans
SELECT SUM(__rel.__v0) AS __m0 FROM (SELECT loans.person_id AS __unit, CASE WHEN loans.status = 'default' THEN 1 ELSE 0 END AS __v0 FROM (SELECT amount, rate, term_months, purpose, status, issued_on, person_id FROM loans_v1 WHERE __sandbox_rank <= 10) AS loans) AS __rel

-- SELECT stddev(credit_score), median(age) FROM persons
SELECT SUM(__rel.__v0) AS __m0, SUM(__rel.__v1) AS __m1, SUM(__rel.__v2) AS __m2, HISTOGRAM(__rel.__v3) AS __m3 FROM (SELECT persons.person_id AS __unit, CASE WHEN NOT persons.credit_score IS NULL THEN 1 ELSE 0 END AS __v0, CAST(ROUND(CASE WHEN persons.credit_score IS NULL THEN NULL ELSE GREATEST(LEAST(persons.credit_score, 850), 300) END - 575) AS BIGINT) AS __v1, CAST(ROUND(POWER((CASE WHEN persons.credit_score IS NULL THEN NULL ELSE GREATEST(LEAST(persons.credit_score, 850), 300) END - 575), 2)) AS BIGINT) AS __v2, CAST(LEAST(FLOOR((CASE WHEN persons.age IS NULL THEN NULL ELSE GREATEST(LEAST(persons.age, 90), 18) END - 18) / 0.0703125), 1023) AS INT) AS __v3 FROM (SELECT district, gender, education, employed, age, income, credit_score, registered_on, person_id FROM persons_v1 WHERE __sandbox_rank <= 1) AS persons) AS __rel

-- SELECT sum(rate) FROM loans
SELECT SUM(__rel.__v0) AS __m0 FROM (SELECT loans.person_id AS __unit, CAST(ROUND(CASE WHEN loans.rate IS NULL THEN NULL ELSE GREATEST(LEAST(loans.rate, 0.25), 0) END * 10000) AS BIGINT) AS __v0 FROM (SELECT amount, rate, term_months, purpose, status, issued_on, person_id FROM loans_v1 WHERE __sandbox_rank <= 10) AS loans) AS __rel
