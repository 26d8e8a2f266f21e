-- Preferred channel (web or store, by number of purchases), favourite category (most
-- ordered; most viewed for those who never ordered) and cohort (month of first purchase).
WITH channels AS (
    SELECT customer_id,
           sum(CASE WHEN channel = 'web' THEN 1 ELSE 0 END) AS web_purchases,
           sum(CASE WHEN channel = 'store' THEN 1 ELSE 0 END) AS store_purchases,
           min(ts) AS first_purchase_at
    FROM purchases
    GROUP BY customer_id
),
ordered AS (
    SELECT customer_id, category, count(*) AS n
    FROM orders
    WHERE customer_id IS NOT NULL AND category IS NOT NULL
    GROUP BY customer_id, category
),
viewed AS (
    SELECT customer_id, viewed_category AS category, count(*) AS n
    FROM web_sessions
    WHERE customer_id IS NOT NULL AND viewed_category IS NOT NULL
    GROUP BY customer_id, viewed_category
),
favourite_ordered AS (
    SELECT customer_id, first_value(category ORDER BY n DESC, category) AS category FROM ordered GROUP BY customer_id
),
favourite_viewed AS (
    SELECT customer_id, first_value(category ORDER BY n DESC, category) AS category FROM viewed GROUP BY customer_id
),
everyone AS (
    SELECT customer_id FROM channels
    UNION SELECT customer_id FROM favourite_ordered
    UNION SELECT customer_id FROM favourite_viewed
)
SELECT e.customer_id,
       CASE
           WHEN c.customer_id IS NULL THEN NULL
           WHEN c.web_purchases >= c.store_purchases THEN 'web'
           ELSE 'store'
       END AS preferred_channel,
       COALESCE(o.category, v.category) AS favourite_category,
       CAST(date_trunc('month', c.first_purchase_at) AS DATE) AS cohort_month
FROM everyone e
LEFT JOIN channels c ON c.customer_id = e.customer_id
LEFT JOIN favourite_ordered o ON o.customer_id = e.customer_id
LEFT JOIN favourite_viewed v ON v.customer_id = e.customer_id
