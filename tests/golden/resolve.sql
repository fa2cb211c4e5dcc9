-- SELECT p.district, count(*) FROM loans l JOIN persons p USING (person_id) GROUP BY p.district
SELECT p.district AS district, COUNT(*) AS _col_1 FROM loans AS l JOIN persons AS p ON l.person_id = p.person_id GROUP BY p.district

-- WITH r AS (SELECT district, count(*) AS n FROM persons WHERE age > 30 GROUP BY district) SELECT district, n * 2 AS twice FROM r WHERE n > 10 ORDER BY twice LIMIT 3
SELECT persons.district AS district, COUNT(*) * 2 AS twice FROM persons AS persons WHERE persons.age > 30 GROUP BY persons.district HAVING COUNT(*) > 10 ORDER BY twice LIMIT 3

-- SELECT percentile_disc(0.9) WITHIN GROUP (ORDER BY income DESC) AS p10 FROM persons
SELECT QUANTILE_DISC(persons.income, 0.1) AS p10 FROM persons AS persons

-- SELECT district, avg(total) FROM (SELECT p.person_id, p.district, sum(l.amount) AS total FROM loans l JOIN persons p ON p.person_id = l.person_id GROUP BY p.person_id, p.district) t GROUP BY district
SELECT t.district AS district, AVG(t.total) AS _col_1 FROM t AS t GROUP BY t.district

-- WITH adults AS (SELECT district, income FROM persons WHERE age >= 25) SELECT district, avg(income) FROM adults GROUP BY district
SELECT persons.district AS district, AVG(persons.income) AS _col_1 FROM persons AS persons WHERE persons.age >= 25 GROUP BY persons.district
