-- SELECT p.district, count(*) FROM persons p JOIN loans l ON p.person_id = l.person_id GROUP BY p.district
SELECT __rel.__k0 AS __k0, COUNT(*) AS __m0 FROM (SELECT p.person_id AS __unit, p.district AS __k0, 1 AS __v0 FROM (SELECT district, gender, education, employed, age, income, credit_score, registered_on, person_id FROM persons_v1 WHERE __sandbox_rank <= 1) AS p JOIN (SELECT amount, rate, term_months, purpose, status, issued_on, person_id FROM loans_v1 WHERE __sandbox_rank <= 10) AS l ON p.person_id = l.person_id) AS __rel GROUP BY __rel.__k0

-- SELECT status, count(DISTINCT person_id) FROM loans GROUP BY status
WITH __rel AS (SELECT loans.person_id AS __unit, loans.status AS __k0, loans.person_id AS __v0 FROM (SELECT amount, rate, term_months, purpose, status, issued_on, person_id FROM loans_v1) AS loans), __groups AS (SELECT __unit, __k0, ROW_NUMBER() OVER (PARTITION BY __unit ORDER BY __gr) AS __gn FROM (SELECT __unit, __k0, RANDOM() AS __gr FROM __rel GROUP BY __unit, __k0) AS __g) SELECT __rel.__k0 AS __k0, COUNT(DISTINCT __rel.__v0) AS __m0 FROM __rel JOIN __groups ON __rel.__unit = __groups.__unit AND __rel.__k0 IS NOT DISTINCT FROM __groups.__k0 WHERE __groups.__gn <= 4 GROUP BY __rel.__k0

-- SELECT district, count(*) FROM persons GROUP BY district
SELECT __rel.__k0 AS __k0, COUNT(*) AS __m0 FROM (SELECT persons.person_id AS __unit, persons.district AS __k0, 1 AS __v0 FROM (SELECT district, gender, education, employed, age, income, credit_score, registered_on, person_id FROM persons_v1 WHERE __sandbox_rank <= 1) AS persons) AS __rel GROUP BY __rel.__k0
