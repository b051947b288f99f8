-- The 浙丽保 2022 rules as plain DuckDB SQL: what a capable analyst would write instead of
-- hmb-batch. One plan year (2022 edition: compliant floor 18,000; deductible 18,000; brackets
-- 75/85/90/95%). Money in integer fen. Reads $settlements, $fees, $roster, $lists (Parquet:
-- each variable a file or a glob such as 'fees/*.parquet', which read_parquet takes alike);
-- writes one row per settlement: setl_id, psn_no, status, payout_fen, cum_payout_fen.
-- No input validation (the generator's extracts are clean); reversals take the negated
-- increments of their original.
CREATE OR REPLACE TEMP TABLE baseline_payouts AS
WITH s AS (
    SELECT setl_id, psn_no, refd_setl_flag = '1' AS is_reversal, init_setl_id, setl_time,
           coalesce(begndate, setl_time::DATE) AS service_date,
           CAST(inscp_amt * 100 AS BIGINT) AS inscp,
           CAST((hifp_pay + cvlserv_pay + hifes_pay + hifmi_pay + hifob_pay + maf_pay) * 100 AS BIGINT) AS funds,
           CAST(refl_selfpay_amt * 100 AS BIGINT) AS refl
    FROM read_parquet(getvariable('settlements'))
),
r AS (SELECT * FROM read_parquet(getvariable('roster')) WHERE plan_year = 2022),
lists AS (SELECT * FROM read_parquet(getvariable('lists'))),
eligibility AS (
    SELECT s.setl_id,
           r.psn_no IS NULL AS not_enrolled,
           r.psn_no IS NOT NULL AND r.basic_suspended_from IS NOT NULL
             AND s.service_date >= r.basic_suspended_from
             AND (r.basic_suspended_to IS NULL OR s.service_date <= r.basic_suspended_to) AS suspended,
           r.psn_no IS NOT NULL AND s.service_date < greatest(
             CASE
               WHEN r.pay_date <= DATE '2021-12-31' THEN DATE '2022-01-01'
               WHEN r.special_event IN ('newborn', 'veteran', 'transfer_in', 'released')
                    AND r.pay_date >= r.event_date
                    AND r.pay_date <= r.event_date + CASE r.special_event WHEN 'newborn' THEN 90 ELSE 30 END
                 THEN greatest(DATE '2022-01-01', coalesce(r.basic_start_date, DATE '2022-01-01'))
               ELSE (r.pay_date + INTERVAL 6 MONTH)::DATE
             END,
             coalesce((r.basic_restored_date + INTERVAL 6 MONTH)::DATE, DATE '1900-01-01')
           ) AS waiting
    FROM s LEFT JOIN r USING (psn_no)
    WHERE NOT s.is_reversal
),
lines AS (
    SELECT f.setl_id,
           CAST(f.fulamt_ownpay_amt * 100 AS BIGINT) AS fulamt,
           CAST((f.preselfpay_amt + f.overlmt_amt) * 100 AS BIGINT) AS pre_over,
           f.list_type,
           EXISTS (SELECT 1 FROM lists n WHERE n.list = 'negative' AND n.code = f.med_list_codg
                   AND f.fee_ocur_time::DATE BETWEEN n.valid_from AND coalesce(n.valid_to, DATE '9999-12-31')) AS negative,
           EXISTS (SELECT 1 FROM lists a WHERE a.list = 'admission' AND a.code = f.med_list_codg
                   AND f.fee_ocur_time::DATE BETWEEN a.valid_from AND coalesce(a.valid_to, DATE '9999-12-31')) AS admitted
    FROM read_parquet(getvariable('fees')) f
),
line_sums AS (
    SELECT setl_id,
           CAST(sum(CASE WHEN negative THEN 0
                    ELSE pre_over + CASE WHEN list_type[1] IN ('1', '3') THEN fulamt
                                         WHEN list_type[1] = '2' AND admitted THEN fulamt
                                         ELSE 0 END END) AS BIGINT) AS line_reasonable
    FROM lines GROUP BY setl_id
),
originals AS (
    SELECT s.setl_id, s.psn_no, s.setl_time, e.not_enrolled OR e.suspended OR e.waiting AS denied,
           CASE WHEN e.not_enrolled OR e.suspended OR e.waiting THEN 0
                ELSE greatest(0, greatest(0, s.inscp - s.funds) - s.refl) END AS compliant,
           CASE WHEN e.not_enrolled OR e.suspended OR e.waiting THEN 0
                ELSE coalesce(ls.line_reasonable, 0) + (s.refl + 1) // 2 END AS reasonable
    FROM s JOIN eligibility e USING (setl_id) LEFT JOIN line_sums ls USING (setl_id)
),
reversals AS (
    SELECT s.setl_id, o.psn_no, s.setl_time, FALSE AS denied,
           -o.compliant AS compliant, -o.reasonable AS reasonable
    FROM s JOIN originals o ON o.setl_id = s.init_setl_id
    WHERE s.is_reversal
),
adjudicated AS (
    SELECT *, FALSE AS is_reversal FROM originals
    UNION ALL
    SELECT *, TRUE AS is_reversal FROM reversals
),
ytd AS (
    SELECT *,
           CAST(sum(compliant) OVER w AS BIGINT) AS cum_x,
           CAST(sum(reasonable) OVER w AS BIGINT) AS cum_r
    FROM adjudicated
    WINDOW w AS (PARTITION BY psn_no ORDER BY setl_time, setl_id ROWS UNBOUNDED PRECEDING)
),
payable AS (
    SELECT *,
           greatest(0, cum_x - 1800000) + greatest(0, cum_r - 1800000) AS p_after,
           greatest(0, cum_x - compliant - 1800000) + greatest(0, cum_r - reasonable - 1800000) AS p_before
    FROM ytd
),
benefit AS (
    SELECT *,
           (75 * least(p_after, 20000000)
            + 85 * greatest(0, least(p_after, 50000000) - 20000000)
            + 90 * greatest(0, least(p_after, 100000000) - 50000000)
            + 95 * greatest(0, p_after - 100000000) + 50) // 100 AS b_after,
           (75 * least(p_before, 20000000)
            + 85 * greatest(0, least(p_before, 50000000) - 20000000)
            + 90 * greatest(0, least(p_before, 100000000) - 50000000)
            + 95 * greatest(0, p_before - 100000000) + 50) // 100 AS b_before
    FROM payable
)
SELECT setl_id, psn_no,
       CASE WHEN is_reversal THEN 'reversal' WHEN denied THEN 'denied'
            WHEN b_after > b_before THEN 'paid' ELSE 'zero' END AS status,
       b_after - b_before AS payout_fen,
       b_after AS cum_payout_fen
FROM benefit;
