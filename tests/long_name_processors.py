"""A task type with a long name and a long processor name, as applications have: the task types
page must break them instead of widening the window (issue 16 item 7)."""

from __future__ import annotations

from webapp.tasks import TaskInfo, TaskProcessor, TaskResult


class ImportCustomerOrdersFromTheLegacyWarehouseSystemEveryNightProcessor(TaskProcessor):
    """Does nothing; only its names matter."""

    task_type = "IMPORT_CUSTOMER_ORDERS_FROM_THE_LEGACY_WAREHOUSE_SYSTEM_EVERY_NIGHT_AND_RECONCILE"

    def process(self, task: TaskInfo, payload: dict) -> TaskResult:
        return TaskResult.success()


class SendTheQuarterlyRevenueReportToEveryRegionalManagerByMailProcessor(TaskProcessor):
    """Does nothing; only its names matter."""

    task_type = "SEND_THE_QUARTERLY_REVENUE_REPORT_TO_EVERY_REGIONAL_MANAGER_BY_MAIL"

    def process(self, task: TaskInfo, payload: dict) -> TaskResult:
        return TaskResult.success()
