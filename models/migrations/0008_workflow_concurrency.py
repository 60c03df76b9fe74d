from tortoise import migrations
from tortoise.migrations import operations as ops
from tortoise.indexes import Index
from tortoise import fields

class Migration(migrations.Migration):
    dependencies = [('models', '0007_schedules')]

    initial = False

    operations = [
        ops.AddField(
            model_name='Workflow',
            name='max_concurrent_executions',
            field=fields.IntField(null=True),
        ),
        ops.AddIndex(
            model_name='Execution',
            index=Index(fields=['workflow_id', 'status']),
        ),
    ]
