-- SELECT district, count(*), avg(income) FROM persons GROUP BY district
SELECT __rel.__k0 AS __k0, COUNT(*) AS __m0, SUM(__rel.__v1) AS __m1, COUNT(__rel.__v2) AS __m2 FROM (SELECT persons.person_id AS __unit, persons.district AS __k0, 1 AS __v0, TRY(CASE WHEN persons.income > 2000000 THEN 2000000 WHEN persons.income < 0 THEN 0 ELSE persons.income END) AS __v1, persons.income AS __v2 FROM (SELECT district, gender, education, employed, age, income, credit_score, registered_on, person_id FROM persons_v1 WHERE __sandbox_rank <= 1) AS persons) AS __rel GROUP BY __rel.__k0

-- SELECT count(DISTINCT person_id) FROM loans WHERE purpose = 'mortgage'
SELECT COUNT(DISTINCT __rel.__v0) AS __m0 FROM (SELECT loans.person_id AS __unit, loans.person_id AS __v0 FROM (SELECT amount, rate, term_months, purpose, status, issued_on, person_id FROM loans_v1) AS loans WHERE loans.purpose = 'mortgage') AS __rel

-- SELECT count(*) FILTER (WHERE status = 'default') FROM loans
SELECT COUNT(__rel.__v0) AS __m0 FROM (SELECT loans.person_id AS __unit, TRY(CASE WHEN loans.status = 'default' THEN 1 END) AS __v0 FROM (SELECT amount, rate, term_months, purpose, status, issued_on, person_id FROM loans_v1 WHERE __sandbox_rank <= 10) AS loans) AS __rel

-- SELECT stddev(credit_score), median(age) FROM persons
SELECT COUNT(__rel.__v0) AS __m0, SUM(__rel.__v1) AS __m1, SUM(__rel.__v2) AS __m2, HISTOGRAM(__rel.__v3) AS __m3 FROM (SELECT persons.person_id AS __unit, persons.credit_score AS __v0, TRY(CAST(ROUND(CAST(CASE WHEN persons.credit_score > 850 THEN 850 WHEN persons.credit_score < 300 THEN 300 ELSE persons.credit_score END AS DOUBLE) - 575) AS BIGINT)) AS __v1, TRY(CAST(ROUND(POWER((CAST(CASE WHEN persons.credit_score > 850 THEN 850 WHEN persons.credit_score < 300 THEN 300 ELSE persons.credit_score END AS DOUBLE) - 575), 2)) AS BIGINT)) AS __v2, TRY(CAST(LEAST(FLOOR((CAST(CASE WHEN persons.age > 90 THEN 90 WHEN persons.age < 18 THEN 18 ELSE persons.age END AS DOUBLE) - 18) / 6.866455078125e-05), 1048575) AS INT)) AS __v3 FROM (SELECT district, gender, education, employed, age, income, credit_score, registered_on, person_id FROM persons_v1 WHERE __sandbox_rank <= 1) AS persons) AS __rel

-- SELECT sum(rate) FROM loans
SELECT SUM(__rel.__v0) AS __m0 FROM (SELECT loans.person_id AS __unit, TRY(CAST(ROUND(CAST(CASE WHEN loans.rate > 0.25 THEN 0.25 WHEN loans.rate < 0 THEN 0 ELSE loans.rate END AS DOUBLE) * 10000) AS BIGINT)) AS __v0 FROM (SELECT amount, rate, term_months, purpose, status, issued_on, person_id FROM loans_v1 WHERE __sandbox_rank <= 10) AS loans) AS __rel

-- SELECT p.district, avg(t.n) FROM persons p JOIN (SELECT person_id, count(*) AS n FROM loans GROUP BY person_id) t ON t.person_id = p.person_id GROUP BY p.district
SELECT __rel.__k0 AS __k0, SUM(__rel.__v0) AS __m0, COUNT(__rel.__v1) AS __m1 FROM (SELECT p.person_id AS __unit, p.district AS __k0, TRY(CASE WHEN t.n > 10 THEN 10 WHEN t.n < 0 THEN 0 ELSE t.n END) AS __v0, t.n AS __v1 FROM (SELECT district, gender, education, employed, age, income, credit_score, registered_on, person_id FROM persons_v1 WHERE __sandbox_rank <= 1) AS p JOIN (SELECT loans.person_id AS person_id, COUNT(*) AS n FROM (SELECT amount, rate, term_months, purpose, status, issued_on, person_id FROM loans_v1 WHERE __sandbox_rank <= 10) AS loans GROUP BY loans.person_id) AS t ON t.person_id = p.person_id) AS __rel GROUP BY __rel.__k0
