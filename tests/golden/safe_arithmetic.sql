-- SELECT avg(income / 12) FROM persons
SELECT AVG(CAST(persons.income AS DOUBLE) / 12) AS _col_0 FROM (SELECT district, gender, education, employed, age, income, credit_score, registered_on, person_id FROM persons_v1 WHERE __sandbox_rank <= 1) AS persons

-- SELECT sum(amount * rate) FROM loans
SELECT SUM(CAST(loans.amount AS DOUBLE) * loans.rate) AS _col_0 FROM (SELECT amount, rate, term_months, purpose, status, issued_on, person_id FROM loans_v1 WHERE __sandbox_rank <= 10) AS loans

-- SELECT floor(age / 10) * 10 AS decade, count(*) FROM persons GROUP BY decade
SELECT FLOOR(CAST(persons.age AS DOUBLE) / 10) * 10 AS decade, COUNT(*) AS _col_1 FROM (SELECT district, gender, education, employed, age, income, credit_score, registered_on, person_id FROM persons_v1 WHERE __sandbox_rank <= 1) AS persons GROUP BY FLOOR(CAST(persons.age AS DOUBLE) / 10) * 10

-- SELECT sum(-credit_score + 900) FROM persons
SELECT SUM(-CAST(persons.credit_score AS DOUBLE) + 900) AS _col_0 FROM (SELECT district, gender, education, employed, age, income, credit_score, registered_on, person_id FROM persons_v1 WHERE __sandbox_rank <= 1) AS persons
